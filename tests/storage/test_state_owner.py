"""`storage.jobs.store.JobStore` is the only writer of a job's `status`: a source scan of every service package.

The scan (Python's `ast`, no imports) flags, in any module but `storage/jobs/store.py`:
- `update(Job)` / `insert(Job)` statements whose `.values(...)` set `status` (or pass `**kwargs`, which could);
- `Job(...)` rows built with a `status` (or `**kwargs`);
- `<row>.status = ...` where `<row>` was read as a `Job` (bound from an expression naming `Job`, a loop over
  one, or a parameter annotated with it);
- SQL text that updates `jobs` and sets `status`.
The checker itself is tested on snippets, the old `BatchStore.cancel` among them, so it cannot pass vacuously.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("storage", "workers", "api", "cli", "bench")
OWNER = Path("storage/jobs/store.py")
SQL_STATUS_UPDATE = re.compile(r"\bupdate\s+\"?jobs\"?\s.*\bset\b.*\bstatus\s*=", re.IGNORECASE | re.DOTALL)


def _names_job(node: ast.AST) -> bool:
    """Whether an expression mentions the `Job` table (`Job`, `Job.__table__`, `tables.Job`, ...)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id == "Job":
            return True
        if isinstance(sub, ast.Attribute) and sub.attr == "Job":
            return True
    return False


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _sets_status(call: ast.Call) -> bool:
    """Whether a `.values(...)` / constructor call may set `status`."""
    for kw in call.keywords:
        if kw.arg is None or kw.arg == "status":
            return True
    for arg in call.args:
        if isinstance(arg, ast.Dict):
            for key in arg.keys:
                if key is None:
                    return True
                if isinstance(key, ast.Constant) and key.value == "status":
                    return True
                if isinstance(key, ast.Attribute) and key.attr == "status":
                    return True
    return False


def _statement_on_job(node: ast.AST) -> bool:
    """Whether a `.values` receiver chain starts at `update(Job...)` / `insert(Job...)` / `Job.__table__.update()`."""
    while isinstance(node, ast.Call | ast.Attribute):
        if isinstance(node, ast.Call):
            name = _callee(node)
            if name in ("update", "insert"):
                if node.args and _names_job(node.args[0]):
                    return True
                if isinstance(node.func, ast.Attribute) and _names_job(node.func.value):
                    return True
            node = node.func
        else:
            node = node.value
    return False


class _Finder(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.rows: list[set[str]] = [set()]  # names known to hold Job rows, per function scope

    # -- scopes --
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        rows = set()
        for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
            if arg.annotation is not None and _names_job(arg.annotation):
                rows.add(arg.arg)
        self.rows.append(rows)
        self.generic_visit(node)
        self.rows.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    # -- binding Job rows --
    def _bind(self, target: ast.AST, value: ast.AST) -> None:
        holds_job = _names_job(value) or any(
            isinstance(n, ast.Name) and n.id in self.rows[-1] for n in ast.walk(value)
        )
        if holds_job:
            for n in ast.walk(target):
                if isinstance(n, ast.Name):
                    self.rows[-1].add(n.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._check_target(target, node.lineno)
            self._bind(target, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target, node.lineno)
        if node.value is not None:
            self._bind(node.target, node.value)
        if _names_job(node.annotation) and isinstance(node.target, ast.Name):
            self.rows[-1].add(node.target.id)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target, node.lineno)
        self.generic_visit(node)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self._bind(node.target, node.iter)
        self.generic_visit(node)

    visit_AsyncFor = visit_For

    def visit_comprehension(self, node: ast.comprehension) -> None:
        self._bind(node.target, node.iter)
        self.generic_visit(node)

    def _check_target(self, target: ast.AST, line: int) -> None:
        if (isinstance(target, ast.Attribute) and target.attr == "status" and isinstance(target.value, ast.Name)
                and target.value.id in self.rows[-1]):
            self.found.append((line, f"{target.value.id}.status = ..."))

    # -- statements and constructors --
    def visit_Call(self, node: ast.Call) -> None:
        name = _callee(node)
        if name == "values" and isinstance(node.func, ast.Attribute) and _statement_on_job(node.func.value) \
                and _sets_status(node):
            self.found.append((node.lineno, "update/insert(Job).values(status=...)"))
        if isinstance(node.func, ast.Name) and node.func.id == "Job" and _sets_status(node):
            self.found.append((node.lineno, "Job(status=...)"))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and SQL_STATUS_UPDATE.search(node.value):
            self.found.append((node.lineno, "SQL text updating jobs.status"))


def status_writes(source: str) -> list[tuple[int, str]]:
    """Where `source` writes a job's status (line, what)."""
    finder = _Finder()
    finder.visit(ast.parse(source))
    return sorted(finder.found)


def _service_modules() -> list[Path]:
    return sorted(p.relative_to(ROOT) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_only_the_job_store_writes_job_status() -> None:
    modules = _service_modules()
    assert OWNER in modules and len(modules) > 50
    offenders = {
        str(path): writes for path in modules if path != OWNER
        for writes in [status_writes((ROOT / path).read_text())] if writes
    }
    assert offenders == {}, "only storage/jobs/store.py may change Job.status (go through JobStore)"


def test_the_job_store_itself_is_seen_writing_status() -> None:
    # the scan is not vacuous: the state machine's own writes are found
    writes = status_writes((ROOT / OWNER).read_text())
    assert len(writes) >= 2, writes


OLD_BATCH_CANCEL = '''
def cancel(self, batch_id, owner_id):
    now = utcnow()
    with write_session(self.sessions) as s:
        canceled = builtins.list(s.scalars(
            update(Job).where(Job.batch_id == batch_id, Job.status == "queued")
            .values(status="canceled", finished_at=now, error_code="canceled",
                    error_message="batch canceled").returning(Job),
            execution_options={"populate_existing": True, "synchronize_session": False},
        ))
'''


@pytest.mark.parametrize(("source", "what"), [
    (OLD_BATCH_CANCEL, "update/insert(Job).values(status=...)"),
    ("stmt = sa.update(tables.Job).where(x).values({Job.status: 'failed'})",
     "update/insert(Job).values(status=...)"),
    ("s.execute(Job.__table__.update().values(**changes))", "update/insert(Job).values(status=...)"),
    ("s.add(Job(id='j', status='running'))", "Job(status=...)"),
    ("def f(s):\n    row = s.get(Job, 'j')\n    row.status = 'failed'\n", "row.status = ..."),
    ("def f(s):\n    for job in s.scalars(select(Job)):\n        job.status = 'canceled'\n", "job.status = ..."),
    ("def f(job: Job):\n    job.status = 'expired'\n", "job.status = ..."),
    ("s.execute(text('UPDATE jobs SET status = :s WHERE id = :id'))", "SQL text updating jobs.status"),
])
def test_the_scan_catches_each_form_of_status_write(source: str, what: str) -> None:
    assert [w for _, w in status_writes(source)] == [what]


@pytest.mark.parametrize("source", [
    "s.execute(update(Job).where(Job.id.in_(ids)).values(last_enqueued_at=now))",
    "s.execute(update(Batch).where(Batch.id == b).values(status='canceled'))",
    "def f(s):\n    batch = s.get(Batch, 'b')\n    batch.status = 'completed'\n",
    "def f(event):\n    event.status = 'dropped'\n",
    "stmt = select(Job).where(Job.status == 'queued')",
])
def test_the_scan_leaves_other_writes_alone(source: str) -> None:
    assert status_writes(source) == []
