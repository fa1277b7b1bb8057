"""Reading a 64 MiB file from the real Linux nfsd: rpclatch's NFSv4 client versus the Linux kernel
NFS client, per security flavor (sys, krb5i, krb5p), in the same run on the same guest.

Brings up the nfsd world of :mod:`interop.choose` (``--world``: network namespaces on a host kernel
with nfsd and esp4, else the User-Mode Linux guest; needs root). Both clients run *inside the world*
(the server's namespaces) against its nfsd, so neither crosses the host-side link:

* ours: ``python -m interop.probe nfs <server> --sec S --read /bench64m.bin`` (NFSv4.1; the figure
  is the client's own streaming read time, connection setup excluded);
* baseline: the kernel client, ``mount -t nfs4 -o sec=S,vers=4.1``, page caches dropped, then
  ``dd if=<file> of=/dev/null bs=1M`` (dd's own elapsed time).

``sys+esp`` runs both clients in the guest's netns ``client`` against 198.51.100.2, so every packet
goes through the manually keyed kernel ESP SAs (rfc4106(gcm(aes))): AUTH_SYS protected by IPsec,
the figure to hold against krb5p (printed as ``nfs.read64m.sys_esp``).

Each measurement is repeated ``--repeat`` times; the median is reported as
``BENCH nfs.read64m.<sec> value=<MB/s> unit=MB/s baseline=<kernel MB/s> ratio=<value/baseline>``.
Usage: ``python benchmarks/nfs_read.py [--repeat 3] [--size-mib 64] [--sec sys,krb5i,krb5p,sys+esp]``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interop.choose import choose_world
from interop.world import ESP_SERVER_ADDR, SERVER_ADDR, NfsdWorld

FILE = "/bench64m.bin"
_DD = re.compile(r"^(\d+) bytes .* copied, ([0-9.]+) s", re.MULTILINE)


def _split(flavor: str) -> tuple[str, bool]:
    sec, _, over = flavor.partition("+")
    return sec, over == "esp"


def kernel_read(guest: NfsdWorld, flavor: str) -> float:
    """MB/s of the kernel client reading FILE (fresh mount, caches dropped)."""
    sec, esp = _split(flavor)
    mnt = f"/tmp/bench-{sec}-{'esp' if esp else 'plain'}"
    if esp:  # mount from netns "client": the client's RPC transport lives there (nsenter keeps the
        # mount namespace, "ip netns exec" would not)
        guest.run(["mkdir", "-p", mnt], check=True)
        guest.run(
            [
                "nsenter",
                "--net=/run/netns/client",
                "mount",
                "-t",
                "nfs4",
                "-o",
                f"sec={sec},vers=4.1",
                f"{ESP_SERVER_ADDR}:/",
                mnt,
            ],
            check=True,
            timeout=120,
        )
    else:
        guest.kernel_mount("/", sec=sec, vers="4.1", mountpoint=mnt)
    try:
        guest.drop_caches()
        res = guest.run(["dd", f"if={mnt}{FILE}", "of=/dev/null", "bs=1M"], check=True, timeout=600)
    finally:
        guest.kernel_umount(mnt)
    m = _DD.search(res.stderr)
    if m is None:
        raise RuntimeError(f"cannot parse dd output: {res.stderr!r}")
    return int(m.group(1)) / 1e6 / float(m.group(2))


def our_read(guest: NfsdWorld, flavor: str, size: int) -> float:
    """MB/s of rpclatch's client reading FILE (its streaming read time)."""
    sec, esp = _split(flavor)
    netns = "client" if esp else None
    guest.drop_caches()
    res = guest.run(
        guest.python_argv(
            "-m",
            "interop.probe",
            "nfs",
            ESP_SERVER_ADDR if esp else SERVER_ADDR,
            "--sec",
            sec,
            "--minor",
            "1",
            "--target",
            guest.service_name,
            "--read",
            FILE,
        ),
        netns=netns,
        env=guest.guest_env("alice", netns),
        timeout=900,
        check=True,
    )
    out = json.loads(res.stdout)
    if out.get("read_bytes") != size:
        raise RuntimeError(f"read {out.get('read_bytes')} bytes, expected {size}: {out}")
    return float(out["read_bytes"]) / 1e6 / float(out["read_seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--sec", default="sys,krb5i,krb5p,sys+esp")
    parser.add_argument(
        "--world",
        choices=("auto", "uml", "netns"),
        default=None,
        help="nfsd world (default: $RPCLATCH_INTEROP_WORLD or auto)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where the world's logs go (default runs/interop/<time>-<pid>/)",
    )
    args = parser.parse_args()
    choice = choose_world(args.world)
    if choice.missing:
        print(
            f"nfs_read: cannot run the Linux nfsd {choice.kind} world here: " + "; ".join(choice.missing),
            file=sys.stderr,
        )
        return 2
    print(f"nfs_read: world: {choice.reason}", file=sys.stderr)
    size = args.size_mib << 20
    with choice.cls(
        run_dir=args.run_dir, progress=lambda line: print(line, file=sys.stderr, flush=True)
    ) as guest:
        guest.run(
            f"head -c {size} /dev/urandom >{guest.server_path(FILE)} && chmod 644 {guest.server_path(FILE)}",
            check=True,
            timeout=300,
        )
        for sec in args.sec.split(","):
            ours, kernel = [], []
            for i in range(args.repeat):
                kernel.append(kernel_read(guest, sec))
                ours.append(our_read(guest, sec, size))
                print(
                    f"nfs_read: {sec} run {i + 1}: rpclatch {ours[-1]:.1f} MB/s, "
                    f"kernel {kernel[-1]:.1f} MB/s",
                    file=sys.stderr,
                    flush=True,
                )
            value, baseline = statistics.median(ours), statistics.median(kernel)
            print(
                f"BENCH nfs.read{args.size_mib}m.{sec.replace('+', '_')} value={value:.2f} unit=MB/s "
                f"baseline={baseline:.2f} ratio={value / baseline:.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
