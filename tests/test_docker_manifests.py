"""docker/ is consistent with the code (images can't be built here, so their text is checked):
every kdcache command in a manifest parses with the real command line, the RayJob asks for
exactly the GPUs its actors need, pods reading object storage get the credentials Secret,
the TrainJob's DataLoader workers fit its CPUs, and the images install what runs there."""

import json
import pathlib
import re
import shlex
import tomllib

import pytest
import yaml

from kdcache.tools.cli.main import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SECRET = "kdcache-storage"


def _documents() -> dict[str, list[dict]]:
    return {
        path.name: [d for d in yaml.safe_load_all(path.read_text()) if d]
        for path in sorted(DOCKER.glob("*.yaml"))
    }


def _kdcache_argv(command: str) -> list[str]:
    """The arguments after ``kdcache`` (or ``-m kdcache``) in a shell command line; shell
    substitutions such as ``$( ... && echo --resume )`` count as the flags they may print."""
    command = re.sub(r"\$\((.*?)\)", lambda m: m.group(1).split("echo")[-1], command)
    words = shlex.split(command)
    start = words.index("kdcache") + 1
    return words[start:]


def _parsed(command: str):
    argv = _kdcache_argv(command)
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the code's command line refuses: kdcache {' '.join(argv)}")


def _containers(document: dict) -> list[dict]:
    """Every container of a manifest's pod templates (RayJob head and worker groups, Job)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "containers":
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return found


def _commands(name: str, document: dict) -> list[str]:
    """Every shell command line of a manifest that runs kdcache."""
    lines = []
    if document.get("kind") == "RayJob":
        lines.append(document["spec"]["entrypoint"])
    for container in _containers(document):
        lines += [
            " ".join(container.get("command", [])) + " " + " ".join(container.get("args", []))
        ]
    for service in document.get("services", {}).values():
        lines.append(service.get("command", ""))
    return [line for line in lines if re.search(r"(^|\s)kdcache\s", line)]


def _gets_secret(container: dict) -> bool:
    refs = [source.get("secretRef", {}).get("name") for source in container.get("envFrom", [])]
    env = [
        v.get("valueFrom", {}).get("secretKeyRef", {}).get("name") for v in container.get("env", [])
    ]
    return SECRET in refs + env


def test_every_file_in_docker_is_parsed_here():
    checked = {*_documents(), *(p.name for p in DOCKER.glob("Dockerfile*"))}
    assert checked == {p.name for p in DOCKER.iterdir()}
    assert all(_documents().values())


def test_every_kdcache_command_in_a_manifest_parses_with_the_code():
    commands = [(name, c) for name, docs in _documents().items() for d in docs
                for c in _commands(name, d)]  # fmt: skip
    assert {name for name, _ in commands} >= {"rayjob.yaml", "trainjob.yaml", "compose.yaml"}
    for _, command in commands:
        assert _parsed(command).command in ("teach", "train")


def test_the_storage_secret_holds_json_storage_options():
    (secret,) = _documents()["storage-secret.yaml"]
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET
    data = secret["stringData"]
    options = json.loads(data["KDCACHE_STORAGE_OPTIONS"])
    assert {"key", "secret"} <= set(options) and options["client_kwargs"]["endpoint_url"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(data)


def test_pods_reading_object_storage_get_the_secret_and_no_inline_credentials():
    for name, documents in _documents().items():
        for document in documents:
            commands = " ".join(_commands(name, document))
            if "s3://" not in commands:
                continue
            for container in _containers(document):
                assert _gets_secret(container), f"{name}: {container['name']} lacks {SECRET}"
            assert "--storage-options" not in commands, f"{name}: credentials on a command line"


def test_the_rayjob_asks_for_the_gpus_and_cpus_its_actors_need():
    (job,) = _documents()["rayjob.yaml"]
    args = _parsed(job["spec"]["entrypoint"])
    assert args.command == "teach" and args.address == "auto"
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"  # no actor there
    gpus = cpus = 0
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        pod_gpus, pod_cpus = int(limits.get("nvidia.com/gpu", 0)), int(limits["cpu"])
        assert pod_gpus * args.cpus_per_worker <= pod_cpus * (args.gpus_per_worker or 1)
        gpus += group["replicas"] * pod_gpus
        cpus += group["replicas"] * pod_cpus
    assert args.workers * args.gpus_per_worker == gpus  # GPUs requested = actors x per actor
    assert args.workers * args.cpus_per_worker <= cpus


def test_the_trainjob_runs_one_process_per_gpu_and_its_loader_workers_fit_the_cpus():
    job = next(d for d in _documents()["trainjob.yaml"] if d["kind"] == "Job")
    (container,) = _containers(job)
    command = " ".join(container["args"])
    args = _parsed(command)
    assert args.command == "train" and args.resume  # resumes after a preemption
    per_node = int(re.search(r"--nproc_per_node\s+(\d+)", command).group(1))
    limits = container["resources"]["limits"]
    assert per_node == int(limits["nvidia.com/gpu"])
    assert (args.workers + 1) * per_node <= int(limits["cpu"])
    assert re.search(r"--nnodes\s+(\d+)", command).group(1) == str(job["spec"]["completions"])


def test_the_images_install_the_package_and_s3_and_match_the_rayjob():
    (job,) = _documents()["rayjob.yaml"]
    ray_version = job["spec"]["rayClusterSpec"]["rayVersion"]
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = set(packages["package-dir"].values())
    for path in DOCKER.glob("Dockerfile*"):
        text = path.read_text()
        assert re.search(rf"^FROM rayproject/ray:{re.escape(ray_version)}-", text, re.M), path.name
        copied = set(re.findall(r"^COPY (\w+) \./\1$", text, re.M))
        assert copied == folders, path.name
        assert re.search(r"pip install .*\bs3fs\b", text), f"{path.name} cannot read s3://"
