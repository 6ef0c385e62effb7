"""The image's manifest: what went into it, from where, so anyone can rebuild it and check.

Written by image/build into the root (`/usr/lib/wire-mpc/manifest.json`) and beside the
disk. It holds only what the commit and the mirror decide, so two builds of one commit give
the same manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def wheel_entries(wheels: Path) -> list[dict[str, str]]:
    return [
        {"file": w.name, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
        for w in sorted(wheels.glob("*.whl"))
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", type=Path, required=True)
    p.add_argument("--packages", type=Path, required=True, help="mkosi's manifest of the tree")
    p.add_argument("--wheels", type=Path, required=True)
    p.add_argument("--profile", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--dirty", choices=("true", "false"), required=True)
    p.add_argument("--mirror", required=True)
    p.add_argument(
        "--bitcoind",
        required=True,
        help="JSON: where bitcoind came from, its version and hash; or null",
    )
    p.add_argument(
        "--boot-tools",
        type=Path,
        required=True,
        help="the boot tools' package versions (image/boot-tools)",
    )
    p.add_argument(
        "--secure-boot-cert",
        required=True,
        help="SHA256 fingerprint of the certificate that signs the boot chain",
    )
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()

    packages = json.loads(args.packages.read_text())["packages"]
    manifest = {
        "image": "wire-mpc",
        "profile": args.profile,
        "commit": args.commit,
        "uncommitted_changes": args.dirty == "true",
        "distribution": "debian bookworm",
        "mirror": args.mirror,
        "packages": sorted(f"{p['name']}={p['version']}" for p in packages),
        "wheels": wheel_entries(args.wheels),
        "bitcoind": json.loads(args.bitcoind),
        "boot": {
            "tools": "debian trixie: " + ", ".join(args.boot_tools.read_text().split("\n")[:-1]),
            "secure_boot_certificate_sha256": args.secure_boot_cert,
        },
    }
    args.output.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
