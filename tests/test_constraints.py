"""requirements/constraints.txt: the exact versions .ci/setup installs, consistent with pyproject.toml.

A constrained install fails when a pin falls outside a range pyproject.toml asks for (or when a
requirement is pinned twice), so these are checked here rather than discovered by a broken setup.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def pins() -> dict[str, Version]:
    """``name -> version`` of every pin; any other non-comment line is an error naming its line."""
    out: dict[str, Version] = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{CONSTRAINTS}:{number}: not a 'name==version' pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in out, f"{CONSTRAINTS}:{number}: {name} pinned twice"
        out[name] = Version(m.group(2))
    return out


def test_every_project_requirement_is_pinned_inside_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    pinned = pins()
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{text!r} in pyproject.toml has no pin in {CONSTRAINTS.name}"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"{CONSTRAINTS.name} pins {name}=={pinned[name]}, outside pyproject.toml's {text!r}"
        )


def test_the_packages_setup_pins_itself_are_left_to_it() -> None:
    """torch (a CPU build, +cpu local version) and vllm (--no-deps) are pinned on .ci/setup's
    command line; a second pin here would fight those lines."""
    pinned = pins()
    assert "torch" not in pinned and "vllm" not in pinned
    setup = (ROOT / ".ci" / "setup").read_text()
    assert 'export PIP_CONSTRAINT="$PWD/requirements/constraints.txt"' in setup
    assert setup.index("PIP_CONSTRAINT") < setup.index("pip install")
