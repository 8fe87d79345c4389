"""deploy/: the node image installs only what the lock pins, the lock matches pyproject.toml, and the
IAM policies say what the docs say. Docker is not needed: the Dockerfile is read as text."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import ray
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
LOCK = "deploy/requirements.lock"
IMAGE_EXTRAS = ("gpu",)  # what the Dockerfile's lock was compiled for (with the extras it pulls in)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^(\w+)\s+(.*)$", text, re.MULTILINE)]


def _lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = (ROOT / LOCK).read_text()
    for block in re.split(r"\n(?=\S)", text):
        m = re.match(r"([A-Za-z0-9._-]+)==([^\s\\;]+)", block)
        if m:
            entries[canonicalize_name(m.group(1))] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


def _wanted() -> list[Requirement]:
    """The image's requirements from pyproject.toml: the dependencies, the extras it installs (and
    the extras those name), and the build system's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    out = [Requirement(r) for r in project["project"]["dependencies"] + project["build-system"]["requires"]]
    todo, seen = list(IMAGE_EXTRAS), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in map(Requirement, extras[extra]):
            if canonicalize_name(r.name) == "raytranscribe":
                todo.extend(r.extras)
            else:
                out.append(r)
    return out


def test_the_base_image_is_rays_cuda_12_image_at_this_ray_pinned_by_digest():
    (base,) = [args for op, args in _instructions() if op == "FROM"]
    m = re.fullmatch(r"rayproject/ray:(\S+)-py311-cu12\d@sha256:([0-9a-f]{64})", base.strip())
    assert m, base
    assert m.group(1) == ray.__version__ == _lock()["ray"][0]


def test_every_python_package_the_image_installs_comes_from_the_lock():
    runs = [args for op, args in _instructions() if op == "RUN"]
    installs = [r for r in runs if re.search(r"\b(pip|uv|conda|mamba|easy_install)\b.*\binstall\b", r)]
    assert installs, runs
    locked, project = installs
    # Everything from the lock, checked against its hashes, wheels only.
    assert re.search(r"--require-hashes\b", locked) and "--only-binary=:all:" in locked
    assert "-r /tmp/requirements.lock" in locked and re.sub(r"\s+", " ", locked).count(" -r ") == 1
    copies = [args for op, args in _instructions() if op == "COPY"]
    assert any(args.split()[-2:] == [LOCK, "/tmp/requirements.lock"] for args in copies), copies
    # Then the project alone: no dependencies, no index, built with the lock's setuptools.
    assert all(flag in project for flag in ("--no-deps", "--no-index", "--no-build-isolation")), project
    assert project.split()[-1] == "/home/ray/raytranscribe"
    # No other way in for a package: no apt python packages, no get-pip, no curl | sh.
    assert not any(re.search(r"apt(-get)? install|get-pip|curl|wget", r) for r in runs), runs


def test_the_lock_pins_every_package_with_hashes_for_linux_x86_64_python_3_11():
    header = (ROOT / LOCK).read_text().splitlines()[1]
    assert "--generate-hashes" in header and "--python-version 3.11" in header and "x86_64-manylinux" in header
    lock = _lock()
    assert len(lock) > 50
    assert all(hashes for _, hashes in lock.values()), [n for n, (_, h) in lock.items() if not h]


def test_the_lock_matches_pyproject():
    lock = _lock()
    for req in _wanted():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} is not in {LOCK}: re-run the uv pip compile command at its top"
        pinned = lock[name][0]
        assert req.specifier.contains(pinned, prereleases=True), f"{LOCK} pins {name}=={pinned}, pyproject wants {req}"
    # What the engines need on a GPU is in: CTranslate2 and cuBLAS 12 (libcublas.so.12).
    assert lock["nvidia-cublas-cu12"][0].startswith("12.") and "ctranslate2" in lock


def test_iam_policies_give_the_head_s3_and_the_database_url_and_nothing_to_pass():
    head = json.loads((DEPLOY / "iam" / "raytranscribe-head-policy.json").read_text())
    actions = {a for s in head["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "ssm:GetParameter", "kms:Decrypt"} <= actions
    assert "ec2:RunInstances" in actions and not any(a.startswith("iam:") for a in actions)
    assert not any(a in ("*", "s3:*", "ec2:*") for a in actions)
    by_sid = {s["Sid"]: s for s in head["Statement"]}
    assert all(r.endswith("/*") and "OUTPUT" in r for r in [by_sid["WriteOutputs"]["Resource"]])
    assert not any("OUTPUT" in r for r in by_sid["ReadInputsAndModels"]["Resource"])  # read inputs and models only
    passrole = json.loads((DEPLOY / "iam" / "operator-passrole.json").read_text())
    (grant,) = [s for s in passrole["Statement"] if s["Action"] == "iam:PassRole"]
    assert grant["Resource"].endswith(":role/raytranscribe-head")
    assert grant["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
