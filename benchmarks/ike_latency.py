"""``ike.latch_latency``: how long rpclatch's key-manager daemon takes from an application's
CREATE_CONNECTION_LATCH to an ESTABLISHED latch with strongSwan as the peer, against strongSwan
doing the same with strongSwan, in the same User-Mode Linux guest and run.

* value = median over ``--rounds`` of keyd -> strongSwan: a real ``rpclatch ipsec keyd`` process
  (``--netns``, the kernel's XFRM tables as datapath) is the initiator; the time runs from sending
  CREATE_CONNECTION_LATCH for one TCP 5-tuple on its AF_UNIX control socket (RFC 5660 §2.2 API,
  docs/keyd.md; the connection is already open) to its success answer, which keyd sends once the
  latch is ESTABLISHED, i.e. after IKE_SA_INIT + IKE_AUTH and the CHILD_SA's kernel SAs and
  per-flow policies are installed. RELEASE_LATCH deletes the IKE SA after each round.
* baseline = median over the same rounds of strongSwan -> strongSwan: a vici ``initiate`` of the
  same CHILD_SA (it returns once charon has installed it), i.e. ``swanctl --initiate`` without the
  CLI's start-up.
* ratio = value / baseline (target <= 1.5; lower is better).

Beside the figure it prints, as ``#`` lines, the spread of both series and the on-the-wire time
of each handshake (IKE_SA_INIT request to IKE_AUTH response, from a capture on each initiator's
veth): the exchange alone, without the API call or the kernel install, which separates the
protocol engines from what surrounds them (keyd's control socket and XFRM install, vici's IPC in
the baseline).

Both pairs use the same IKE suite (AES-GCM-16-256, PRF_HMAC_SHA2_256, Curve25519), Ed25519 raw
public keys configured in advance on both sides (keyd: ``--peer-key``), ESP AES-GCM-16-128 in
transport mode; each IKE SA is deleted before the next round. The rounds alternate between the two
initiators. Both run in the same single-CPU UML guest (see interop/ike_guest.py); absolute figures
are those of UML on this machine, the ratio is what compares.

Needs root, /dev/net/tun, linux.uml and the peers of scripts/setup.sh; prints one line saying
what is missing (and no BENCH line) otherwise.

Usage: ``python benchmarks/ike_latency.py [--rounds N] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from interop.ike_guest import IkeGuest  # noqa: E402


def wire_times(pcap: Path) -> list[float]:
    """Per IKE SA (initiator SPI), seconds from the IKE_SA_INIT request to the IKE_AUTH response
    in the capture (the exchange alone: no API call, no kernel install)."""
    if not pcap.exists():
        return []
    fields = ("frame.time_relative", "isakmp.ispi", "isakmp.exchangetype", "isakmp.flag_r")
    out = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(pcap),
            "-Y",
            "isakmp",
            "-T",
            "fields",
            *(a for f in fields for a in ("-e", f)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    start: dict[str, float] = {}
    times = []
    for line in out.splitlines():
        t, spi, exch, resp = [*line.split("\t"), "", "", "", ""][:4]
        if exch == "34" and resp in ("0", "False") and spi not in start:
            start[spi] = float(t)
        elif exch == "35" and resp in ("1", "True") and spi in start:
            times.append(float(t) - start.pop(spi))
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args()
    if args.rounds < 1:
        print("ike_latency: --rounds must be at least 1", file=sys.stderr)
        return 2
    missing = IkeGuest.missing()
    if missing:
        print("ike_latency: cannot run here: " + "; ".join(missing), file=sys.stderr)
        return 0
    run_dir = args.out or Path(tempfile.mkdtemp(prefix="ike-latency-"))
    with IkeGuest(run_dir=run_dir) as g:
        out = g.run_dir / "bench"
        out.mkdir(parents=True, exist_ok=True)
        r = g.run(
            g.python_argv("-m", "interop.ike_peers", "bench", str(args.rounds), g.guest_path(out)),
            env=g.guest_env(None),
            timeout=60 + 10 * args.rounds,
        )
    if not r.ok:
        print(f"ike_latency: the guest run failed (rc {r.returncode}):\n{r.stderr[-3000:]}", file=sys.stderr)
        return 1
    res = json.loads(r.stdout.strip().splitlines()[-1])
    times = res["times"]
    if res["errors"] or len(times["keyd"]) != args.rounds or len(times["strongswan"]) != args.rounds:
        print(f"ike_latency: incomplete run, no figure: {res['errors']}; logs in {run_dir}", file=sys.stderr)
        return 1
    for kind in ("keyd", "strongswan"):
        wire = wire_times(run_dir / "bench" / f"{kind}.pcap")
        if wire:
            ms = sorted(t * 1000 for t in wire)
            print(
                f"# {kind} -> strongSwan on the wire, IKE_SA_INIT request -> IKE_AUTH response, ms: "
                f"min {ms[0]:.1f} median {statistics.median(ms):.1f} max {ms[-1]:.1f} ({len(ms)} handshakes)"
            )
    value = statistics.median(times["keyd"])
    baseline = statistics.median(times["strongswan"])
    for kind in ("keyd", "strongswan"):
        ms = sorted(t * 1000 for t in times[kind])
        print(
            f"# {kind} -> strongSwan, ms: min {ms[0]:.1f} median {statistics.median(ms):.1f} max {ms[-1]:.1f}"
        )
    ratio = value / baseline
    print(
        f"BENCH ike.latch_latency value={value:.4f} unit=s baseline={baseline:.4f} ratio={ratio:.3f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
