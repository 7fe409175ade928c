"""Sphinx configuration.

Build: ``sphinx-build -n -W --keep-going -b html docs docs/_build/html`` (the
``docs`` nox session): nitpicky, warnings are errors.

External links without the network. The build machines reach package
registries only, so ``sphinx.ext.intersphinx`` cannot download an
``objects.inv``: Python's and Trio's are vendored in ``_inventories/`` and read
from disk (``_inventories/README.md`` says where each comes from and how to
rebuild it). ``_resolve_external`` below links the few names no inventory
holds. A name found nowhere still fails the build, so a typo cannot slip
through.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
from pathlib import Path
from typing import Any, TypeVar

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.ext.intersphinx import missing_reference
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.inspect import DefaultValue

import trio_batch

project = "trio_batch"
author = "trio_batch developers"
project_copyright = "trio_batch developers"
release = trio_batch.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_inventories"]
root_doc = "index"

# Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

nitpicky = True

html_theme = "furo"
html_title = f"trio_batch {release}"


# -- external links ----------------------------------------------------------

INVENTORIES = Path(__file__).parent / "_inventories"
OTEL_DOCS = "https://opentelemetry-python.readthedocs.io/en/latest/"

# Python's and Trio's inventories, read from disk: never downloaded.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", str(INVENTORIES / "python-3.11.inv")),
    "trio": ("https://trio.readthedocs.io/en/stable/", str(INVENTORIES / "trio-0.35.0.inv")),
}

#: Other external names -> their page. prometheus_client has no API reference
#: with an anchor per name: its names link to its documentation's home.
OTHER_PAGES = {
    "opentelemetry.trace.TracerProvider": f"{OTEL_DOCS}api/trace.html",
    "opentelemetry.trace.get_tracer_provider": f"{OTEL_DOCS}api/trace.html",
    "prometheus_client.registry.CollectorRegistry": "https://prometheus.github.io/client_python/",
    "outcome.Outcome": "https://outcome.readthedocs.io/en/latest/api.html#outcome.Outcome",
}

#: Annotations that Sphinx writes without their module -> the name to link.
BARE_NAMES = {"array": "array.array"}

# Names that docstrings of trio_batch.sim mention but that trio_batch.sim does
# not export (helpers of its command line and loader); they have no page to
# link to. The sim's owners may export or reword them; until then, not errors.
nitpick_ignore = [
    ("py:func", "apply_override"),
    ("py:func", "read_scenario_data"),
    ("py:func", "scenario_from_data"),
    ("py:data", "POLICY_SYNTAX"),
    ("py:exc", "PlottingUnavailable"),
]


def _is_type_variable(target: str) -> bool:
    module, _, name = target.rpartition(".")
    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(value, TypeVar)


def _resolve_external(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.TextElement
) -> nodes.Element | None:
    """Link what the inventories do not know: ``OTHER_PAGES``, ``BARE_NAMES``, type variables."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    if target in BARE_NAMES:
        node["reftarget"] = BARE_NAMES[target]
        return missing_reference(app, env, node, contnode)
    if target in OTHER_PAGES:
        page = OTHER_PAGES[target]
        uri = page if "prometheus" in target else f"{page}#{target}"
        reference = nodes.reference("", "", internal=False, refuri=uri, reftitle=target)
        reference += contnode
        return reference
    if _is_type_variable(target):
        # A signature's type variable (K, I, O of Batcher): its name is the
        # documentation; there is nothing to link to.
        return contnode
    return None


# -- what autodoc reads from the source of re-exported names -----------------
#
# trio_batch/__init__.py sets each public name's __module__ to "trio_batch"
# (as Trio does), so autodoc reads "#:" comments (enum members, attrs fields)
# and @overload signatures from trio_batch/__init__.py, where there are none.
# Give the analyzer of "trio_batch" those of the private modules that define
# the names: then open_batcher shows its typed overloads, not the untyped
# implementation.

PRIVATE_MODULES = ("_batcher", "_open", "_errors", "_observe", "_policies", "_statistics")


def _source_defaults(function: Any) -> dict[str, str]:
    """Each parameter's default as written in ``function``'s source (``"Immediate()"``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef)
    arguments = definition.args
    positional = arguments.posonlyargs + arguments.args
    defaults = dict(
        zip(
            [argument.arg for argument in positional[len(positional) - len(arguments.defaults) :]],
            [ast.unparse(default) for default in arguments.defaults],
            strict=True,
        )
    )
    for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
        if default is not None:
            defaults[argument.arg] = ast.unparse(default)
    return defaults


def _with_source_defaults(overload: inspect.Signature, function: Any) -> inspect.Signature:
    """``overload`` with each ``= ...`` default replaced by the implementation's default."""
    defaults = _source_defaults(function)
    return overload.replace(
        parameters=[
            parameter.replace(default=DefaultValue(defaults[parameter.name]))
            if str(parameter.default) == "..." and parameter.name in defaults
            else parameter
            for parameter in overload.parameters.values()
        ]
    )


def _merge_private_modules(app: Sphinx) -> None:
    package = ModuleAnalyzer.for_module("trio_batch")
    package.analyze()
    for name in PRIVATE_MODULES:
        private = ModuleAnalyzer.for_module(f"trio_batch.{name}")
        private.analyze()
        package.attr_docs.update(private.attr_docs)
        package.tagorder.update(private.tagorder)
        for qualname, overloads in private.overloads.items():
            # A method's overloads have a dotted name (Batcher.submit_many).
            function: Any = trio_batch
            for part in qualname.split("."):
                function = getattr(function, part)
            package.overloads[qualname] = [
                _with_source_defaults(overload, function) for overload in overloads
            ]


def _untyped_attribute_docs(
    app: Sphinx, what: str, name: str, obj: object, options: Any, lines: list[str]
) -> None:
    """Keep napoleon from reading ``Summary: more`` in an attribute's doc as ``type: text``.

    Our attribute and enum-member comments never give an inline type (the type
    is in the annotation), so the first line's colon becomes a dash.
    """
    if what not in ("attribute", "data") or not lines:
        return
    line = lines[0]
    start = 0
    while (colon := line.find(": ", start)) != -1:
        if line.count("`", 0, colon) % 2 == 0:  # not inside a literal or a role
            lines[0] = f"{line[:colon]} \N{EM DASH} {line[colon + 2 :]}"
            return
        start = colon + 2


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", _merge_private_modules)
    # Before napoleon (priority 500), which reads the same lines.
    app.connect("autodoc-process-docstring", _untyped_attribute_docs, priority=400)
    app.connect("missing-reference", _resolve_external)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
