"""The maintenance-window rule (sites_app/windows.py), judged by PostgreSQL at given instants:
local time, windows past midnight, time zones, daylight-saving changes, blackout dates, and
the next opening of a closed site."""

import datetime

import pytest

from sites_app.tests.factories import BlackoutPeriodFactory, MaintenanceWindowFactory, SiteFactory
from sites_app.windows import earliest_opening, next_openings, sites_open

pytestmark = pytest.mark.django_db

MON, TUE, WED, THU, FRI, SAT, SUN = range(1, 8)
UTC = datetime.UTC


def utc(*args) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


def t(hh, mm=0) -> datetime.time:
    return datetime.time(hh, mm)


def site_with(tz="Europe/London", windows=(), blackouts=()):
    site = SiteFactory(timezone=tz)
    for weekday, starts, ends in windows:
        MaintenanceWindowFactory(site=site, weekday=weekday, starts=starts, ends=ends)
    for starts_on, ends_on in blackouts:
        BlackoutPeriodFactory(site=site, starts_on=starts_on, ends_on=ends_on)
    return site


def is_open(site, at) -> bool:
    return site.pk in sites_open([site.pk], at)


# --- Local time -----------------------------------------------------------------------------


def test_a_window_is_open_from_its_start_until_just_before_its_end_by_local_time():
    # Monday 7 December 2026; London is on GMT (UTC+0).
    site = site_with(windows=[(MON, t(2), t(5))])

    assert not is_open(site, utc(2026, 12, 7, 1, 59))
    assert is_open(site, utc(2026, 12, 7, 2, 0))
    assert is_open(site, utc(2026, 12, 7, 4, 59))
    assert not is_open(site, utc(2026, 12, 7, 5, 0))
    # Same clock time, another day: no window on Tuesday.
    assert not is_open(site, utc(2026, 12, 8, 3, 0))


def test_the_same_instant_is_inside_one_sites_window_and_outside_anothers():
    london = site_with("Europe/London", [(MON, t(2), t(5))])
    new_york = site_with("America/New_York", [(MON, t(2), t(5))])
    sydney = site_with("Australia/Sydney", [(MON, t(2), t(5))])
    at = utc(2026, 12, 7, 3, 0)  # London Mon 03:00, New York Sun 22:00, Sydney Mon 14:00

    assert sites_open([london.pk, new_york.pk, sydney.pk], at) == {london.pk}
    # New York's Monday 02:00 EST is 07:00 UTC; Sydney's (AEDT, UTC+11) is Sunday 15:00 UTC.
    assert sites_open([new_york.pk], utc(2026, 12, 7, 7, 30)) == {new_york.pk}
    assert sites_open([sydney.pk], utc(2026, 12, 6, 15, 30)) == {sydney.pk}


def test_a_window_that_crosses_midnight_runs_into_the_next_day():
    site = site_with(windows=[(SAT, t(22), t(2))])  # Saturday night

    assert not is_open(site, utc(2026, 12, 5, 21, 59))
    assert is_open(site, utc(2026, 12, 5, 23, 0))  # Saturday
    assert is_open(site, utc(2026, 12, 6, 1, 59))  # Sunday, still Saturday's window
    assert not is_open(site, utc(2026, 12, 6, 2, 0))
    assert not is_open(site, utc(2026, 12, 6, 23, 0))  # Sunday night has no window


def test_a_window_ending_at_midnight_and_a_24_hour_window():
    until_midnight = site_with(windows=[(FRI, t(20), t(0))])
    whole_day = site_with(windows=[(SUN, t(6), t(6))])

    assert is_open(until_midnight, utc(2026, 12, 4, 23, 59))
    assert not is_open(until_midnight, utc(2026, 12, 5, 0, 0))
    assert is_open(whole_day, utc(2026, 12, 6, 6, 0))
    assert is_open(whole_day, utc(2026, 12, 7, 5, 59))
    assert not is_open(whole_day, utc(2026, 12, 7, 6, 0))


def test_a_site_without_windows_is_always_open():
    site = site_with()

    assert is_open(site, utc(2026, 12, 7, 12, 0))


# --- Daylight saving -------------------------------------------------------------------------


def test_spring_forward_the_window_opens_when_the_clock_jumps_into_it():
    # Sunday 28 March 2027, London: 01:00 GMT becomes 02:00 BST (at 01:00 UTC).
    site = site_with(windows=[(SUN, t(1, 30), t(3))])

    assert not is_open(site, utc(2027, 3, 28, 0, 59))  # 00:59 GMT
    assert is_open(site, utc(2027, 3, 28, 1, 0))  # 02:00 BST
    assert not is_open(site, utc(2027, 3, 28, 2, 0))  # 03:00 BST
    assert next_openings([site.pk], utc(2027, 3, 28, 0, 0)) == {site.pk: utc(2027, 3, 28, 1, 0)}


def test_spring_forward_a_window_inside_the_skipped_hour_does_not_open_that_day():
    site = site_with(windows=[(SUN, t(1, 15), t(1, 45))])

    assert not any(is_open(site, utc(2027, 3, 28, 0, minute)) for minute in range(0, 60, 5))
    assert not any(is_open(site, utc(2027, 3, 28, 1, minute)) for minute in range(0, 60, 5))
    # Its next opening is the Sunday after, 01:15 BST = 00:15 UTC.
    assert next_openings([site.pk], utc(2027, 3, 28, 0, 0)) == {site.pk: utc(2027, 4, 4, 0, 15)}


def test_fall_back_a_window_in_the_repeated_hour_is_open_both_times():
    # Sunday 31 October 2027, London: 02:00 BST becomes 01:00 GMT (at 01:00 UTC).
    site = site_with(windows=[(SUN, t(1), t(1, 30))])

    assert is_open(site, utc(2027, 10, 31, 0, 15))  # 01:15 BST
    assert not is_open(site, utc(2027, 10, 31, 0, 45))  # 01:45 BST
    assert is_open(site, utc(2027, 10, 31, 1, 15))  # 01:15 GMT
    assert not is_open(site, utc(2027, 10, 31, 1, 30))
    # From before the change, the first reading of 01:00 is the opening; from between the
    # two readings, the second.
    assert next_openings([site.pk], utc(2027, 10, 30, 23, 0)) == {site.pk: utc(2027, 10, 31, 0, 0)}
    assert next_openings([site.pk], utc(2027, 10, 31, 0, 45)) == {site.pk: utc(2027, 10, 31, 1, 0)}


def test_new_york_windows_keep_their_local_hours_across_both_changes_of_2026():
    site = site_with("America/New_York", windows=[(SUN, t(3), t(5)), (SAT, t(23), t(2))])

    # 8 March 2026: 02:00 EST becomes 03:00 EDT at 07:00 UTC.
    assert is_open(site, utc(2026, 3, 8, 7, 0))  # 03:00 EDT
    assert not is_open(site, utc(2026, 3, 8, 9, 0))  # 05:00 EDT
    # Saturday night's window ends at 02:00, which that night never comes: it ends at 03:00 EDT.
    assert is_open(site, utc(2026, 3, 8, 6, 59))  # 01:59 EST
    # 1 November 2026: 02:00 EDT becomes 01:00 EST at 06:00 UTC; 03:00 EST is 08:00 UTC.
    assert not is_open(site, utc(2026, 11, 1, 7, 59))
    assert is_open(site, utc(2026, 11, 1, 8, 0))
    assert next_openings([site.pk], utc(2026, 11, 1, 7, 0)) == {site.pk: utc(2026, 11, 1, 8, 0)}


# --- Blackout dates --------------------------------------------------------------------------


def test_no_window_opens_on_a_blackout_date_but_the_night_before_runs_on():
    site = site_with(
        windows=[(THU, t(22), t(2)), (FRI, t(2), t(5)), (SAT, t(2), t(5))],
        blackouts=[(datetime.date(2026, 12, 25), datetime.date(2026, 12, 25))],
    )

    assert is_open(site, utc(2026, 12, 25, 1, 0))  # Thursday 24th's window, after midnight
    assert not is_open(site, utc(2026, 12, 25, 3, 0))  # Friday 25th: blacked out
    assert is_open(site, utc(2026, 12, 26, 3, 0))
    assert next_openings([site.pk], utc(2026, 12, 25, 2, 30)) == {site.pk: utc(2026, 12, 26, 2, 0)}


def test_a_blackout_closes_a_site_without_windows_for_the_whole_local_day():
    thanksgiving = (datetime.date(2026, 11, 27), datetime.date(2026, 11, 28))
    site = site_with("America/New_York", blackouts=[thanksgiving])

    assert is_open(site, utc(2026, 11, 27, 4, 59))  # Thursday 23:59 EST
    assert not is_open(site, utc(2026, 11, 27, 5, 0))
    assert not is_open(site, utc(2026, 11, 29, 4, 59))
    assert next_openings([site.pk], utc(2026, 11, 27, 12, 0)) == {site.pk: utc(2026, 11, 29, 5, 0)}


def test_the_next_opening_looks_past_a_long_blackout():
    site = site_with(
        windows=[(MON, t(2), t(5))],
        blackouts=[(datetime.date(2026, 11, 20), datetime.date(2027, 1, 3))],
    )

    assert next_openings([site.pk], utc(2026, 12, 7, 12, 0)) == {site.pk: utc(2027, 1, 4, 2, 0)}


# --- Next opening ----------------------------------------------------------------------------


def test_next_openings_answer_now_for_open_sites_and_the_earliest_is_the_first_of_all():
    at = utc(2026, 12, 7, 3, 0)  # Monday
    open_now = site_with(windows=[(MON, t(2), t(5))])
    tonight = site_with(windows=[(MON, t(22), t(2))])
    tokyo = site_with("Asia/Tokyo", windows=[(TUE, t(1), t(4))])  # Mon 16:00 UTC

    assert next_openings([open_now.pk, tonight.pk, tokyo.pk], at) == {
        open_now.pk: at,
        tonight.pk: utc(2026, 12, 7, 22, 0),
        tokyo.pk: utc(2026, 12, 7, 16, 0),
    }
    assert earliest_opening([tonight.pk, tokyo.pk], at) == utc(2026, 12, 7, 16, 0)
    assert earliest_opening([], at) is None
