"""Product bugs the fuzzers found that are still open, so the fuzz stays green meanwhile.

Why: the fuzz targets must keep running (and keep finding *new* problems) while a reported
bug waits for its fix. A fuzz case that fails with exactly an open bug's signature is counted
under ``KNOWN-BUG <id>`` in the target's histogram instead of failing; anything else fails.
Each bug also has a focused ``xfail(strict=True)`` regression test: once the fix lands that
test XPASSes (and fails the run), which is the signal to delete the id here and the xfail mark.
"""

from __future__ import annotations

# id -> where it is and what goes wrong (see the regression tests for the exact inputs)
OPEN: dict[str, str] = {
    "deep-json": "flanneld/netconfig.py parse_network_config and flanneld/lease.py "
                 "decode_lease_attrs: json.loads raises RecursionError (not ValueError) on "
                 "~1000-deep nesting; it escapes NetworkConfigError/LeaseDecodeError, so one "
                 "such value under <prefix>/subnets crashes SubnetManager.list_leases and the "
                 "LeaseWatcher of every node",
    "subnet-key-lax": "flanneld/lease.py parse_subnet_key: accepts keys Go flannel's "
                      "pattern refuses - non-ASCII digits in the prefix length "
                      "('10.244.1.0-\\uff12\\uff14' via str.isdigit + int) and an IPv6 scope id "
                      "('...&fe80::%eth0-64'); two different keys then name one subnet",
    "cni-surrogate": "cni-plugin/main.py error_json/main: an error message or details holding a "
                     "lone surrogate (CNI_COMMAND/CNI_CONTAINERID with invalid UTF-8, or a "
                     "\\ud800 escape in name/cniVersion/delegate type) makes "
                     "gojson.dumps(...).encode() raise UnicodeEncodeError outside the "
                     "try in main(): traceback, no error JSON on stdout",
    "cni-infinity": "cni-plugin (gojson.loads go_numbers / render / cmd_add): a JSON number "
                    "beyond float64 (1e999) decodes to inf; ADD then fails with code 999 "
                    "'OverflowError: cannot convert float infinity to integer' (ipam.routes "
                    "mtu/advmss/priority/table/scope) or 'ValueError: json: unsupported value: "
                    "inf' (gojson.marshal of the delegate config) instead of Go's decode error",
}


def reason(bug_id: str) -> str:
    """The histogram label for a case that hit an open bug (KeyError once it is closed)."""
    if bug_id not in OPEN:
        raise KeyError(f"{bug_id} is no longer an open bug: the fuzz case must now pass")
    return f"KNOWN-BUG {bug_id}"
