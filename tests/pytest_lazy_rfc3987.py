"""An early pytest plugin (``-p tests.pytest_lazy_rfc3987`` in pyproject's addopts): rfc3987_syntax is
imported on its first use, not when jsonschema is imported.

nbval's plugin imports nbformat, nbformat imports jsonschema, and jsonschema imports rfc3987_syntax
(when installed) for its "iri" and "iri-reference" format checks; rfc3987_syntax builds three Lark
parsers at import, some 1-2 s of CPU in each pytest process (the xdist controller and each worker).
Nothing in those processes checks an IRI: nbformat validates notebooks without a format checker,
and check-jsonschema (tests/test_compose.py) runs as a command of its own.

jsonschema binds the one function it uses, ``from rfc3987_syntax import is_valid_syntax``, so a
stand-in module whose ``is_valid_syntax`` imports the real module on its first call keeps the
checks exactly as they were, only later. This must run before nbval's plugin is loaded: ``-p``
plugins are loaded first, entry-point plugins and conftest.py files after them, and xdist's workers
read the same addopts. The checkout's root is on sys.path (the editable install), so ``tests.``
resolves (as ``python -m pytest``'s current directory would too).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

NAME = "rfc3987_syntax"


def _install_stand_in() -> None:
    """Put the stand-in in sys.modules (built in here: pytest probes a plugin's module-level names)."""
    stand_in = types.ModuleType(NAME, f"Stands in for {NAME} until its first use (see {__name__}).")

    def real() -> types.ModuleType:
        """The real module, imported on the first call; it then replaces the stand-in in sys.modules."""
        if sys.modules.get(NAME) is stand_in:
            del sys.modules[NAME]
        return importlib.import_module(NAME)

    def is_valid_syntax(term: str, value: str) -> Any:
        return real().is_valid_syntax(term, value)

    def module_getattr(attr: str) -> Any:
        """Any other public name comes from the real module; private and dunder names (which
        introspection such as inspect.unwrap asks for) are simply missing."""
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(real(), attr)

    stand_in.is_valid_syntax = is_valid_syntax  # type: ignore[attr-defined]
    stand_in.__getattr__ = module_getattr  # type: ignore[method-assign]
    sys.modules[NAME] = stand_in


# Only when it is installed and nobody has imported it yet: otherwise jsonschema does as it would anyway.
if NAME not in sys.modules and importlib.util.find_spec(NAME) is not None:
    _install_stand_in()
