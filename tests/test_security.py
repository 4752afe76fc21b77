"""Every ``torch.load(`` in the project's code and bundle configs passes ``weights_only=True``: a checkpoint
is unpickled as tensors and plain values only, never as arbitrary Python objects.

MONAI's ``CheckpointLoader`` handler (which ``common.engines.CheckpointLoader`` extends and every bundle's
resume, evaluate and inference config uses) calls ``torch.load(..., weights_only=True)`` itself in MONAI
1.6; the last test checks that in the installed MONAI, so an upgrade that drops it fails here.
"""

import ast
import inspect
import re
import textwrap

from monai.handlers import CheckpointLoader

from common.bundle import REPO_ROOT

SCANNED = ("common", "bundles", "tools")
WEIGHTS_ONLY = re.compile(r"weights_only\s*=\s*True\b")


def _is_torch_load(node: ast.AST) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "load"
        and isinstance(func.value, ast.Name)
        and func.value.id == "torch"
    )


def unsafe_python_loads(source: str) -> list[int]:
    """Line numbers of the ``torch.load`` calls in ``source`` without the keyword ``weights_only=True``
    (a call, not a mention in a docstring or comment)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if _is_torch_load(node):
            safe = any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            )
            if not safe:
                lines.append(node.lineno)
    return lines


def unsafe_config_loads(source: str) -> list[int]:
    """Line numbers of the ``torch.load(`` calls in a JSON config's ``$`` expressions whose arguments
    (up to the matching parenthesis) lack ``weights_only=True``; a JSON string never spans lines."""
    lines = []
    for number, line in enumerate(source.splitlines(), start=1):
        for match in re.finditer(r"torch\.load\(", line):
            depth, end = 1, match.end()
            while end < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[end], 0)
                end += 1
            if not WEIGHTS_ONLY.search(line[match.end() : end]):
                lines.append(number)
    return lines


def test_every_torch_load_passes_weights_only_true():
    offences = []
    for folder in SCANNED:
        for path in sorted((REPO_ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".json") or not path.is_file():
                continue
            source = path.read_text()
            found = unsafe_python_loads(source) if path.suffix == ".py" else unsafe_config_loads(source)
            offences += [f"{path.relative_to(REPO_ROOT)}:{line}" for line in found]
    assert not offences, f"torch.load without weights_only=True at {offences}"


def test_the_scanners_find_unsafe_calls():
    python = 'torch.load(p)\n"""torch.load(doc)"""\nx = torch.load(\n    p, weights_only=False\n)\n'
    assert unsafe_python_loads(python) == [1, 3]
    assert unsafe_python_loads("torch.load(p, map_location='cpu', weights_only=True)") == []
    config = (
        '{"a": "$torch.load(@path, map_location=\'cpu\')",\n "b": "$torch.load(f(x), weights_only=True)"}'
    )
    assert unsafe_config_loads(config) == [1]


def test_monai_checkpoint_loader_reads_weights_only():
    source = textwrap.dedent(inspect.getsource(CheckpointLoader.__call__))
    calls = [node for node in ast.walk(ast.parse(source)) if _is_torch_load(node)]
    assert calls and unsafe_python_loads(source) == []
