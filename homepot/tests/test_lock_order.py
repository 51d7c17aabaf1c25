"""The lock order's step 2 (the audit chain lock last) holds only if audited writes run in
audited_atomic blocks: a plain transaction.atomic around audit_record inserts the row (and
takes the chain lock) at once, before any row lock that follows. This reads the services'
code and names any write that slipped back to transaction.atomic."""

import ast
import inspect
import pkgutil
from importlib import import_module

import pytest

import accounts.services
import devices_app.services
import jobs_app.services
import sites_app.services

AUDITING_CALLS = {"audit_record", "update_audited"}


def _calls_audit(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) in AUDITING_CALLS
        for n in ast.walk(node)
    )


def _is_plain_atomic(node: ast.AST) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return isinstance(target, ast.Attribute) and target.attr == "atomic"


def _sources(module) -> list[str]:
    """The module's code; for a services package (jobs_app.services), every file in it."""
    sources = [inspect.getsource(module)]
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        sources.append(inspect.getsource(import_module(f"{module.__name__}.{info.name}")))
    return sources


@pytest.mark.parametrize(
    "module", [accounts.services, devices_app.services, jobs_app.services, sites_app.services]
)
def test_audited_writes_use_audited_atomic_not_a_plain_transaction(module):
    offenders = []
    for node in (n for source in _sources(module) for n in ast.walk(ast.parse(source))):
        plain = isinstance(node, ast.FunctionDef) and any(_is_plain_atomic(d) for d in node.decorator_list)
        if plain and _calls_audit(node):
            offenders.append(f"{node.name} (decorated with transaction.atomic)")
        plain = isinstance(node, ast.With) and any(_is_plain_atomic(i.context_expr) for i in node.items)
        if plain and _calls_audit(node):
            offenders.append(f"line {node.lineno} (with transaction.atomic())")
    assert offenders == [], "use audited_atomic() for audited writes: " + ", ".join(offenders)
