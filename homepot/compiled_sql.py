"""SQL compiled once per process, then only executed.

Building a statement through the ORM (a queryset, its compiler, an INSERT's field list, an
aggregate with nine sums) costs more Python than the round trip it makes on the hot paths:
a job's INSERT, a site looked up by its business id, the console's fleet totals, a device's
timeline (docs/performance.md, issue 11). Everything here keeps a statement per process and
per database alias in one cache, `compiled(key, using, build)`, and offers four forms of it:

- `RowByUniqueColumn(model, field).get(value)`: the row whose unique column equals `value`,
  as the ORM's instance (every concrete column, Django's converters, `from_db`), or None;
- `insert_one(instance)`: the INSERT `save()` sends (or `bulk_create([instance])`), the pk
  and the columns with a database default set back on the instance;
- `@prebuilt(name)` and `fetch_prebuilt(name, *args)`: a fixed read the ORM compiles the
  first time (captured before it reaches the database), its rows as `.values()` gives;
- `ParameterisedRead(build, *kinds).rows(*values)`: a read the ORM compiles once, whose
  values (a device's id, a time) are the statement's parameters, then run with any values.

`column_converter(field, connection)` is the ORM's conversion of a raw column, for any
hand-written read of whole rows (accounts.selectors.api_token_with_user).

Only for statements whose text (and, but for a ParameterisedRead's values, parameters) is
fully determined by the key: never for anything with a user's scope in it. A key names every
value its statement depends on.
"""

import contextlib
import datetime

from django.db import connections, router, transaction
from django.db.models import signals

# (what, *its arguments, alias) -> plan. Keys come from code and settings, not from
# requests, so this stays small; the bound is a guard against a caller that breaks that rule.
_PLANS: dict[tuple, object] = {}
_MAX_PLANS = 1024


def compiled(key: tuple, using: str, build):
    """`build(connection)` for database `using`, made the first time `key` is asked for on
    it in this process and kept; later calls return the kept plan."""
    cache_key = (*key, using)
    try:
        return _PLANS[cache_key]
    except KeyError:
        pass
    plan = build(connections[using])
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[cache_key] = plan
    return plan


def column_converter(field, connection):
    """The ORM's conversion of a column's raw value (backend's, then the field's)."""
    column = field.get_col(field.model._meta.db_table)
    steps = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
    if not steps:
        return lambda value: value

    def convert(value):
        for step in steps:
            value = step(value, column, connection)
        return value

    return convert


# --- A row by a unique column ---------------------------------------------------------------


class RowByUniqueColumn:
    """`lookup.get(value)`: the `model` row whose unique `field_name` equals `value`, or None,
    as `model.objects.filter(field_name=value).first()` gives it, in one indexed lookup."""

    def __init__(self, model, field_name: str):
        self.model = model
        self.field = model._meta.get_field(field_name)
        if not (self.field.unique or self.field.primary_key):
            raise ValueError(f"{model.__name__}.{field_name} is not unique")

    def get(self, value):
        using = router.db_for_read(self.model)
        sql, names, converters = compiled(("row_by", self.model, self.field.name), using, self._build)
        with connections[using].cursor() as cursor:
            cursor.execute(sql, [value])
            row = cursor.fetchone()
        if row is None:
            return None
        values = [convert(raw) for convert, raw in zip(converters, row, strict=True)]
        return self.model.from_db(using, names, values)

    def _build(self, connection) -> tuple:
        quote = connection.ops.quote_name
        fields = self.model._meta.concrete_fields
        sql = (
            f"SELECT {', '.join(quote(f.column) for f in fields)} "  # noqa: S608 - model metadata, quoted
            f"FROM {quote(self.model._meta.db_table)} WHERE {quote(self.field.column)} = %s LIMIT 1"
        )
        return sql, [f.attname for f in fields], [column_converter(f, connection) for f in fields]


# --- One INSERT ------------------------------------------------------------------------------


def insert_one(instance, *, send_signals: bool = True) -> None:
    """INSERT the new `instance` as `instance.save()` does (with `send_signals`; without,
    as `bulk_create([instance])` does), from SQL written once per model: the pk and the
    columns with a database default come back and are set on it.

    Compiling the INSERT of a 40-column job was about a tenth of a job creation's CPU
    (docs/performance.md, issue 11, apihot3). Anything this does not reproduce exactly (a
    pk already set, a value that is an expression, a field with its own placeholder, a
    model with parents) goes through `save()` or `bulk_create` instead.
    """
    model = type(instance)
    using = router.db_for_write(model, instance=instance)
    connection = connections[using]
    plan = None
    if instance._state.adding and instance.pk is None:
        plan = compiled(("insert", model), using, lambda connection: _build_insert_plan(model, connection))
    if plan is None or any(hasattr(getattr(instance, f.attname), "resolve_expression") for f in plan.fields):
        _insert_through_orm(instance, using, send_signals)
        return
    instance._prepare_related_fields_for_save(operation_name="save")
    if send_signals:
        signals.pre_save.send(sender=model, instance=instance, raw=False, using=using, update_fields=None)
    values = [field.pre_save(instance, True) for field in plan.fields]
    if any(hasattr(value, "resolve_expression") for value in values):
        # Set by a pre_save receiver: the ORM's own INSERT, its signals already sent.
        instance._save_table(raw=False, cls=model, force_insert=True, using=using)
    else:
        params = [field.get_db_prep_save(v, connection) for field, v in zip(plan.fields, values, strict=True)]
        with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
            cursor.execute(plan.sql, params)
            returned = cursor.fetchone()
        for field, convert, value in zip(plan.returning, plan.returning_converters, returned, strict=True):
            setattr(instance, field.attname, convert(value))
    instance._state.adding = False
    instance._state.db = using
    if send_signals:
        signals.post_save.send(
            sender=model, instance=instance, created=True, update_fields=None, raw=False, using=using
        )


def _insert_through_orm(instance, using: str, send_signals: bool) -> None:
    if send_signals:
        instance.save(using=using)
    else:
        type(instance)._default_manager.using(using).bulk_create([instance])


class _InsertPlan:
    __slots__ = ("fields", "returning", "returning_converters", "sql")


def _build_insert_plan(model, connection) -> _InsertPlan | None:
    """The model's INSERT ... RETURNING, or None where insert_one leaves it to the ORM."""
    meta = model._meta
    if meta.parents or meta.auto_field is None or not connection.features.can_return_columns_from_insert:
        return None
    fields = [f for f in meta.local_concrete_fields if not f.generated and f is not meta.auto_field]
    if any(hasattr(f, "get_placeholder") for f in fields):
        return None
    quote = connection.ops.quote_name
    plan = _InsertPlan()
    plan.fields = fields
    plan.returning = list(meta.db_returning_fields)
    plan.returning_converters = [column_converter(f, connection) for f in plan.returning]
    plan.sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608 - model metadata, quoted
        f"VALUES ({', '.join(['%s'] * len(fields))}) "
        f"RETURNING {', '.join(quote(f.column) for f in plan.returning)}"
    )
    return plan


# --- Fixed reads the ORM compiles once -------------------------------------------------------


class _Captured(Exception):
    """Stops the captured statement before it reaches the database."""


def capture_sql(call, *, using: str = "default") -> tuple[str, tuple]:
    """The first statement `call()` would execute, and its parameters, without running it."""
    captured = {}

    def wrapper(execute, sql, params, many, context):
        captured["sql"], captured["params"] = sql, tuple(params or ())
        raise _Captured

    connection = connections[using]
    # The statement never runs: keep it out of the logged queries (a test's query count).
    logged, connection.force_debug_cursor = connection.force_debug_cursor, False
    try:
        with connection.execute_wrapper(wrapper), contextlib.suppress(_Captured):
            call()
    finally:
        connection.force_debug_cursor = logged
    if "sql" not in captured:
        raise ValueError("the call executed no statement")
    return captured["sql"], captured["params"]


_BUILDERS: dict = {}


def prebuilt(name: str):
    """Registers `builder(*args) -> call` under `name`: the call is what runs the ORM read
    once to capture its statement (fetch_prebuilt's key is (name, *args))."""

    def register(builder):
        _BUILDERS[name] = builder
        return builder

    return register


def fetch_prebuilt(name: str, *args, using: str = "default") -> list[dict]:
    """The rows of the statement registered as `name` for `args` (compiled on first use in
    this process), as dicts keyed by the statement's column names, as `.values()` gives."""
    sql, params = compiled(
        ("prebuilt", name, *args), using, lambda connection: capture_sql(_BUILDERS[name](*args), using=using)
    )
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# --- Reads compiled once, then run with new values -------------------------------------------

# A value each kind of slot stands for while the ORM compiles the statement: two sets, so
# that a slot's parameter is found by where the statement's parameters differ between them.
# The integers fit a 32-bit column (Django finds a lookup out of a column's range empty).
_SENTINELS = {
    int: (lambda n: 1_900_000_001 + n, lambda n: 1_900_000_501 + n),
    str: (lambda n: f"homepot-slot-{n}-a", lambda n: f"homepot-slot-{n}-b"),
    datetime.datetime: (
        lambda n: datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=n + 1),
        lambda n: datetime.datetime(2002, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=n + 1),
    ),
}


class ParameterisedRead:
    """`read.rows(*values, **fixed)`: the rows of `build(*values, **fixed)`, a `.values_list()`
    queryset, as lists in its column order, with the ORM's conversions, from a statement the
    ORM compiled once per process and per `fixed` (hashable: a limit, a flag), its
    parameters replaced by `values` since.

    For the hot reads whose Python is mostly the ORM building its statement (a device's
    timeline: a third of its CPU). `kinds` names each value's type (int, str or an aware
    datetime.datetime). A value must reach the statement as it is given: compared to a
    column (`=`, `>=`, `in` one value), not transformed (`__icontains`, `__date`) nor
    inlined (a slice). The first compile checks it, from two sets of made-up values: the
    statement's text must not change, and each value must land as given, else ValueError.
    The scope rule: only for statements whose values come from what the caller already may
    see (a device it was given), never to filter by a user's scope.
    """

    def __init__(self, build, *kinds: type):
        unknown = [kind for kind in kinds if kind not in _SENTINELS]
        if unknown:
            raise ValueError(f"no slot for values of type {unknown}")
        self.build, self.kinds = build, kinds

    def rows(self, *values, using: str = "default", **fixed) -> list[list]:
        if len(values) != len(self.kinds):
            raise TypeError(f"{len(self.kinds)} values expected, {len(values)} given")
        plan = compiled(
            ("parameterised", self, *sorted(fixed.items())), using, lambda c: self._compile(c, using, fixed)
        )
        params = list(plan.params)
        for position, slot in plan.slots:
            params[position] = values[slot]
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(plan.sql, params)
            rows = cursor.fetchall()
        if not plan.converters:
            return [list(row) for row in rows]
        return list(plan.compiler.apply_converters(rows, plan.converters))

    def _compile(self, connection, using: str, fixed: dict) -> "_ReadPlan":
        first, second = (
            self._statement([_SENTINELS[kind][n](i) for i, kind in enumerate(self.kinds)], using, fixed)
            for n in (0, 1)
        )
        (sql, params, compiler), (other_sql, other_params, _) = first, second
        if sql != other_sql or len(params) != len(other_params):
            raise ValueError("a value changes the statement's text: it cannot be a parameter")
        made_up = {_SENTINELS[kind][0](i): i for i, kind in enumerate(self.kinds)}
        slots = []
        for position, (value, other) in enumerate(zip(params, other_params, strict=True)):
            if value != other:
                if value not in made_up:
                    raise ValueError(f"parameter {position} is a value transformed by the ORM: {value!r}")
                slots.append((position, made_up[value]))
        missing = set(range(len(self.kinds))) - {slot for _, slot in slots}
        if missing:
            raise ValueError(f"value(s) {sorted(missing)} do not reach the statement as parameters")
        plan = _ReadPlan()
        plan.sql, plan.params, plan.slots, plan.compiler = sql, tuple(params), tuple(slots), compiler
        plan.converters = compiler.get_converters([column for column, _, _ in compiler.select])
        return plan

    def _statement(self, values: list, using: str, fixed: dict) -> tuple:
        queryset = self.build(*values, **fixed)
        compiler = queryset.query.get_compiler(using=using)
        sql, params = compiler.as_sql()
        return sql, params, compiler


class _ReadPlan:
    __slots__ = ("compiler", "converters", "params", "slots", "sql")
