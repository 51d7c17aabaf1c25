"""A model's row by one unique column, from SQL written once per process.

Building and compiling `Model.objects.filter(column=value).first()` costs more Python than
the round trip it makes: on the API's hot requests (a job's site looked up by its business
id) that was a tenth of the request's CPU (docs/performance.md, issue 11). This reads every
concrete column, converts each through Django's own converters, and makes the instance with
`from_db`, so the caller gets what the ORM would have given.
"""

from django.db import connections, router, transaction
from django.db.models import signals


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


class RowByUniqueColumn:
    """`lookup.get(value)`: the `model` row whose unique `field_name` equals `value`, or None."""

    def __init__(self, model, field_name: str):
        self.model = model
        self.field = model._meta.get_field(field_name)
        if not (self.field.unique or self.field.primary_key):
            raise ValueError(f"{model.__name__}.{field_name} is not unique")
        self._plans: dict[str, tuple] = {}

    def get(self, value):
        using = router.db_for_read(self.model)
        connection = connections[using]
        sql, names, converters = self._plan(connection)
        with connection.cursor() as cursor:
            cursor.execute(sql, [value])
            row = cursor.fetchone()
        if row is None:
            return None
        values = [convert(raw) for convert, raw in zip(converters, row, strict=True)]
        return self.model.from_db(using, names, values)

    def _plan(self, connection) -> tuple:
        plan = self._plans.get(connection.alias)
        if plan is None:
            quote = connection.ops.quote_name
            fields = self.model._meta.concrete_fields
            sql = (
                f"SELECT {', '.join(quote(f.column) for f in fields)} "  # noqa: S608 - model metadata, quoted
                f"FROM {quote(self.model._meta.db_table)} WHERE {quote(self.field.column)} = %s LIMIT 1"
            )
            names = [f.attname for f in fields]
            plan = self._plans[connection.alias] = (
                sql,
                names,
                [column_converter(f, connection) for f in fields],
            )
        return plan


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
    plan = _insert_plan(model, connection) if instance._state.adding and instance.pk is None else None
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


_INSERT_PLANS: dict[tuple, _InsertPlan | None] = {}


def _insert_plan(model, connection) -> _InsertPlan | None:
    key = (model, connection.alias)
    if key not in _INSERT_PLANS:
        _INSERT_PLANS[key] = _build_insert_plan(model, connection)
    return _INSERT_PLANS[key]


def _build_insert_plan(model, connection) -> _InsertPlan | None:
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
