"""Regenerate minigrad/cpu/kernel_manifest.json: the CPU kernels a training run compiles.

    python tools/make_kernel_manifest.py            # about 1-2 minutes (a cold compile)

Runs, each in a fresh process with an empty Numba cache, the CLI's default LeNet-5
training (MNIST, Adam, one-cycle) and a ResNet-18 CIFAR-shaped run (synthetic data, SGD
with Nesterov momentum, BatchNorm), three batches each plus evaluation, and records every
minigrad.cpu kernel signature they compile with its compile time
(minigrad.cpu.precompile.record), tagged with the models that use it.  Run it again after
changing a kernel's arguments; tests/test_precompile.py checks that every entry still
names a kernel.
"""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# The CLI runs recorded, by the zoo name (zoo.get_spec(...).name) the manifest tags
# their kernels with.
WORKLOADS = {
    "lenet5": ["train", "lenet", "--epochs", "1", "--limit", "3"],
    "resnet18": ["train", "resnet18", "--dataset", "synthetic", "--batch-size", "16",
                 "--epochs", "1", "--limit", "3"],
}


def record_one(model, path):
    """In this process (empty cache): run one workload, write its entries to ``path``."""
    import cli
    from minigrad.cpu import precompile

    with tempfile.TemporaryDirectory() as out_dir:
        args = WORKLOADS[model] + ["--no-progress", "--out", out_dir]
        entries = precompile.record(
            lambda: cli.cli.main(args=args, prog_name="cli.py", standalone_mode=False))
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(entries, fh)


def main():
    """Record each workload in a child process with its own empty cache, merge, and write
    the manifest atomically (one entry per line)."""
    from minigrad.cpu import precompile

    if len(sys.argv) == 3:
        record_one(sys.argv[1], sys.argv[2])
        return
    merged = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in WORKLOADS:
            cache, path = os.path.join(tmp, model + "-cache"), os.path.join(tmp, model + ".json")
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, MINIGRAD_PRECOMPILE="0")
            subprocess.run([sys.executable, os.path.abspath(__file__), model, path], env=env,
                           check=True)
            with open(path, encoding="utf-8") as fh:
                for e in json.load(fh):
                    key = (e["module"], e["name"], json.dumps(e["args"]))
                    old = merged.setdefault(key, dict(e, models=[]))
                    old["models"].append(model)
                    old["seconds"] = max(old["seconds"], e["seconds"])
    entries = sorted(merged.values(), key=lambda e: -e["seconds"])
    precompile.save_manifest(entries, precompile.MANIFEST, "tools/make_kernel_manifest.py")
    for model in WORKLOADS:
        mine = [e for e in entries if model in e["models"]]
        print(f"{model}: {len(mine)} kernel signatures, {sum(e['seconds'] for e in mine):.1f} s "
              f"of compile recorded (nested calls counted in their callers too)")
    print(f"-> {precompile.MANIFEST}")


if __name__ == "__main__":
    main()
