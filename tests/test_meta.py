"""The test suite's own structure: test modules share code through helpers.py and conftest.py only.

A test module that imports another one runs that module's import-time code and ties the two together
(an autouse fixture imported by name even changes which tests it applies to), so each test module stands alone.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# An import of a test module inside a string: code a test runs in a subprocess.
EMBEDDED_IMPORT = re.compile(r"^\s*(?:from|import)\s+(test_\w+)", re.MULTILINE)


def imported_test_modules(source: str) -> list[str]:
    """Names of test modules (``test_*``) that ``source`` imports, in code or in code held by a string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0].startswith("test_")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0].startswith("test_"):
                found.append(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += EMBEDDED_IMPORT.findall(node.value)
    return found


def test_the_check_sees_every_form_of_import():
    # Written with "test-" so that this file's own string does not count as an import.
    source = """
import test-a
import numpy, test-b.sub
from test-c import x
def f():
    from test-d import y
SCRIPT = '''
import sys
from test-e import z
'''
from helpers import small_network
from . import test_relative_is_not_a_module_import
""".replace("test-", "test_")
    assert imported_test_modules(source) == ["test_a", "test_b.sub", "test_c", "test_d", "test_e"]


def test_no_test_module_imports_another():
    modules = sorted(TESTS.glob("*.py"))
    assert {"conftest.py", "helpers.py", "test_meta.py"} <= {path.name for path in modules}
    offenders = {
        path.name: names for path in modules if (names := imported_test_modules(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, f"import shared code from tests/helpers.py (fixtures: tests/conftest.py): {offenders}"
