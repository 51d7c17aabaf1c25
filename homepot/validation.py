"""Model validation with fewer round trips.

Django validates each CheckConstraint of a model with a query of its own, inside a savepoint
of its own (`Q.check`): a job's seven check constraints cost 21 statements per created job.
`full_clean_batched` decides in Python the conditions whose SQL meaning Python reproduces
exactly (comparisons, `in`, `isnull` of the instance's own plain values, AND/OR/NOT with SQL's
three-valued logic), and asks PostgreSQL for all the others in ONE `SELECT`, with the same rule
(a condition that is NULL passes, as in the database) and the same errors; unique constraints
and everything else are validated exactly as `full_clean` does.
"""

import datetime
import operator

from django.core.exceptions import FieldError, ValidationError
from django.db import DatabaseError, connections, router, transaction
from django.db.models import BooleanField, CheckConstraint, F, Q, Value
from django.db.models.functions import Coalesce
from django.db.models.sql import Query
from django.db.models.sql.constants import SINGLE


def full_clean_batched(instance, *, exclude=None) -> None:
    """`instance.full_clean(exclude=exclude)`, its check constraints checked in one query.
    Raises ValidationError with the errors full_clean would give."""
    exclude = set(exclude or ())
    errors = {}
    try:
        instance.full_clean(exclude=exclude, validate_constraints=False)
    except ValidationError as exc:
        errors = exc.update_error_dict(errors)
    # Like full_clean: constraints are not checked on fields that already failed.
    exclude |= set(errors)
    try:
        _validate_constraints(instance, exclude)
    except ValidationError as exc:
        errors = exc.update_error_dict(errors)
    if errors:
        raise ValidationError(errors)


def _validate_constraints(instance, exclude: set) -> None:
    using = router.db_for_write(type(instance), instance=instance)
    errors = {}
    checks = []
    for model_class, constraints in instance.get_constraints():
        for constraint in constraints:
            if isinstance(constraint, CheckConstraint):
                checks.append((model_class, constraint))
                continue
            try:
                constraint.validate(model_class, instance, exclude=exclude, using=using)
            except ValidationError as exc:
                if getattr(exc, "code", None) == "unique" and len(constraint.fields) == 1:
                    errors.setdefault(constraint.fields[0], []).append(exc)
                else:
                    errors = exc.update_error_dict(errors)
    checks, failed = _checks_decided_in_python(instance, checks, exclude)
    for constraint in failed + _failed_checks(instance, checks, exclude, using):
        errors = ValidationError(
            constraint.get_violation_error_message(), code=constraint.violation_error_code
        ).update_error_dict(errors)
    if errors:
        raise ValidationError(errors)


def _failed_checks(instance, checks, exclude: set, using: str) -> list[CheckConstraint]:
    """The check constraints `instance` violates, from ONE query (no FROM: the instance's
    values are literals). A constraint naming an excluded field is skipped, as Django does."""
    if not checks:
        return []
    query = Query(None)
    values = instance._get_field_expression_map(meta=instance._meta, exclude=exclude)
    # Only the fields the conditions name: resolving an annotation per column (forty on a
    # job) was most of this function's CPU, and the others play no part in the answer.
    named = set().union(*(constraint.condition.referenced_base_fields for _, constraint in checks))
    for name, value in values.items():
        if name not in named:
            continue
        expression = value if hasattr(value, "resolve_expression") else Value(value)
        query.add_annotation(expression, name, select=False)
    asked = []
    for index, (_, constraint) in enumerate(checks):
        try:
            query.add_annotation(
                Coalesce(Q(constraint.condition), True, output_field=BooleanField()), f"check_{index}"
            )
        except FieldError:
            continue  # it names an excluded field
        asked.append(constraint)
    if not asked:
        return []
    connection = connections[using]
    compiler = query.get_compiler(using=using)
    try:
        # A savepoint only where a failed statement would spoil the caller's transaction.
        if connection.in_atomic_block:
            with transaction.atomic(using=using):
                row = compiler.execute_sql(SINGLE)
        else:
            row = compiler.execute_sql(SINGLE)
    except DatabaseError:
        return []  # as Django's Q.check: the database itself still enforces them
    return [constraint for constraint, passed in zip(asked, row, strict=True) if not passed]


# --- Conditions decided without the database ------------------------------------------------

_ORDERINGS = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
# Values whose `=`, `IN` and ordering mean the same in PostgreSQL as in Python. Strings are
# left to `=`/`IN` (a collation decides their order), JSON, decimals and floats to the database.
_COMPARABLE = (bool, int, str, datetime.datetime, datetime.date, datetime.timedelta)


class _AskDatabase(Exception):
    """The condition uses something Python does not reproduce exactly."""


class _NamesExcludedField(Exception):
    """The condition names a field left out of validation: skipped, as Django does."""


def _checks_decided_in_python(instance, checks, exclude: set):
    """(the checks still to ask PostgreSQL, the constraints that failed in Python)."""
    values = instance._get_field_expression_map(meta=instance._meta, exclude=exclude)
    remaining, failed = [], []
    for model_class, constraint in checks:
        try:
            passed = _sql_truth(constraint.condition, values, exclude) is not False
        except _NamesExcludedField:
            continue
        except (_AskDatabase, TypeError):
            remaining.append((model_class, constraint))
            continue
        if not passed:
            failed.append(constraint)
    return remaining, failed


def _sql_truth(node, values: dict, exclude: set) -> bool | None:
    """What PostgreSQL makes of the condition `node` on the instance: True, False or None
    (unknown, e.g. `NULL >= 1`)."""
    if isinstance(node, Q):
        results = [_sql_truth(child, values, exclude) for child in node.children]
        if node.connector == Q.AND:
            result = False if False in results else (None if None in results else True)
        elif node.connector == Q.OR:
            result = True if True in results else (None if None in results else False)
        else:
            raise _AskDatabase(node.connector)
        return (not result if result is not None else None) if node.negated else result
    if not isinstance(node, tuple):
        raise _AskDatabase(node)
    name, rhs = node
    field_name, _, lookup = name.partition("__")
    lhs = _plain_value(field_name, values, exclude)
    if isinstance(rhs, F):
        rhs = _plain_value(rhs.name, values, exclude)
    elif hasattr(rhs, "resolve_expression"):
        raise _AskDatabase(rhs)
    return _lookup_truth(lookup or "exact", lhs, rhs)


def _plain_value(name: str, values: dict, exclude: set):
    if name not in values:
        raise _NamesExcludedField(name) if name in exclude else _AskDatabase(name)
    value = values[name]
    if not isinstance(value, Value):
        raise _AskDatabase(value)
    value = value.value
    if value is not None and not isinstance(value, _COMPARABLE):
        raise _AskDatabase(value)
    return value


def _lookup_truth(lookup: str, lhs, rhs) -> bool | None:
    if lookup == "isnull" and isinstance(rhs, bool):
        return (lhs is None) is rhs
    if lookup == "exact":
        if rhs is None:  # Django asks IS NULL
            return lhs is None
        return None if lhs is None else _same_kind(lhs, rhs) and lhs == rhs
    if lookup == "in" and isinstance(rhs, (list, tuple, set, frozenset)):
        if lhs is None or not rhs or any(item is None or not _same_kind(lhs, item) for item in rhs):
            raise _AskDatabase(rhs)
        return lhs in rhs
    if lookup in _ORDERINGS and not isinstance(lhs, str) and not isinstance(rhs, str):
        if lhs is None or rhs is None:
            return None
        if not _same_kind(lhs, rhs):
            raise _AskDatabase(rhs)
        return _ORDERINGS[lookup](lhs, rhs)
    raise _AskDatabase(lookup)


def _same_kind(lhs, rhs) -> bool:
    # 1 == True in Python, not in PostgreSQL; an aware and a naive datetime do not compare.
    if isinstance(lhs, bool) != isinstance(rhs, bool) or isinstance(lhs, str) != isinstance(rhs, str):
        raise _AskDatabase(rhs)
    if isinstance(lhs, datetime.datetime) and (lhs.tzinfo is None) != (getattr(rhs, "tzinfo", None) is None):
        raise _AskDatabase(rhs)
    return True
