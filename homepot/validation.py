"""Model validation with fewer round trips.

Django validates each CheckConstraint of a model with a query of its own, inside a savepoint
of its own (`Q.check`): a job's seven check constraints cost 21 statements per created job.
`full_clean_batched` asks PostgreSQL for all of them in ONE `SELECT`, with the same rule
(a condition that is NULL passes, as in the database) and the same errors; unique constraints
and everything else are validated exactly as `full_clean` does.
"""

from django.core.exceptions import FieldError, ValidationError
from django.db import DatabaseError, connections, router, transaction
from django.db.models import BooleanField, CheckConstraint, Q, Value
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
    for constraint in _failed_checks(instance, checks, exclude, using):
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
