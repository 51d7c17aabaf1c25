"""The PostgreSQL backend sends a transaction's BEGIN with its first statement
(homepot/db/postgresql/base.py): one round trip fewer per transaction, with the same
transactions: what a rolled-back block wrote is gone, whatever its first statement was."""

import os
import tempfile

import pytest
from django.db import ProgrammingError, connection, transaction
from psycopg.pq import TransactionStatus

from sites_app.models import Site
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)


class Boom(Exception):
    pass


def queries_sent(block) -> list[str]:
    """The simple-protocol queries and extended-protocol parses libpq sent while `block()`
    ran (its protocol trace): one entry per message that carries SQL."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        try:
            block()
        finally:
            pgconn.untrace()
        os.fsync(trace.fileno())
        trace.seek(0)
        return [
            line
            for line in trace.read().splitlines()
            if "\tF\t" in line and ("\tQuery\t" in line or "\tParse\t" in line)
        ]


def test_begin_goes_with_the_first_statement_and_commit_alone():
    def block():
        with transaction.atomic():
            SiteFactory.build(site_id="site-begin").save()

    sent = queries_sent(block)
    assert len(sent) == 2, sent
    assert '"BEGIN; INSERT INTO ' in sent[0]
    assert '"COMMIT"' in sent[1]
    assert Site.objects.filter(site_id="site-begin").exists()
    assert connection.connection.info.transaction_status == TransactionStatus.IDLE


def test_an_empty_block_sends_nothing():
    def block():
        with transaction.atomic():
            pass

    assert queries_sent(block) == []


def test_what_a_rolled_back_block_wrote_is_gone():
    with pytest.raises(Boom), transaction.atomic():
        SiteFactory(site_id="site-gone")
        raise Boom
    assert not Site.objects.filter(site_id="site-gone").exists()


def test_an_update_as_first_statement_counts_its_rows():
    SiteFactory(site_id="site-a", name="a")
    SiteFactory(site_id="site-b", name="b")
    with transaction.atomic():
        changed = Site.objects.filter(site_id__in=["site-a", "site-b"]).update(name="c")
        rows = list(Site.objects.filter(name="c").values_list("site_id", flat=True).order_by("site_id"))
    assert changed == 2
    assert rows == ["site-a", "site-b"]


@pytest.mark.parametrize("first", ["executemany", "server_side_cursor", "select_for_update_iterator"])
def test_a_block_opened_by_another_kind_of_statement_is_still_one_transaction(first):
    SiteFactory(site_id="site-kept", name="kept")
    with pytest.raises(Boom), transaction.atomic():
        if first == "executemany":
            with connection.cursor() as cursor:
                cursor.executemany(
                    "UPDATE sites_app_site SET name = %s WHERE site_id = %s", [("x", "site-kept")]
                )
        elif first == "server_side_cursor":
            assert [s.site_id for s in Site.objects.all().iterator(chunk_size=10)] == ["site-kept"]
        else:
            # FOR UPDATE refuses a WITH HOLD cursor: the cursor is declared inside the block.
            assert len(list(Site.objects.select_for_update().iterator(chunk_size=10))) == 1
        Site.objects.filter(site_id="site-kept").update(name="changed")
        assert Site.objects.get(site_id="site-kept").name == "changed"
        raise Boom
    assert Site.objects.get(site_id="site-kept").name == "kept"
    # The next block sends its BEGIN with its first statement again.
    sent = queries_sent(lambda: transaction.atomic()(lambda: Site.objects.filter(pk=0).exists())())
    assert len(sent) == 2 and '"BEGIN; SELECT' in sent[0]


def test_a_server_side_cursor_after_the_first_statement_is_declared_in_the_block():
    SiteFactory(site_id="site-1")
    with transaction.atomic():
        Site.objects.filter(site_id="site-1").update(name="one")
        assert len(list(Site.objects.select_for_update().iterator(chunk_size=10))) == 1


def test_outside_atomic_with_autocommit_off_each_commit_ends_one_transaction():
    transaction.set_autocommit(False)
    try:
        SiteFactory(site_id="site-first")
        transaction.commit()
        SiteFactory(site_id="site-second")
        transaction.rollback()
    finally:
        transaction.set_autocommit(True)
    assert list(Site.objects.values_list("site_id", flat=True)) == ["site-first"]


def test_a_first_statement_postgresql_cannot_parse_leaves_the_next_one_inside_the_transaction():
    with pytest.raises(Boom), transaction.atomic():
        with pytest.raises(ProgrammingError), connection.cursor() as cursor:
            cursor.execute("SELEC 1")  # nothing of the query runs, its BEGIN neither
        SiteFactory.build(site_id="site-after-error").save()
        raise Boom
    assert not Site.objects.filter(site_id="site-after-error").exists()
