#!/usr/bin/python3
"""HTTPS between the judge client (`dnpo_judge score`) and `dnpo_judge serve --tls-cert/--tls-key`
on 127.0.0.1, with certificates made by the openssl CLI for this test:

  trusted:   judge.ca_file = the CA that signed the server's certificate: every answer is scored,
             with the rule judge's in-process score, one request each in the server's log.
  wrong CA:  a CA that did not sign it, and the system's CAs (ca_file ""): the run fails with a
             clear error (the certificate was refused, why, and judge.ca_file), no request
             reaches the server, and nothing is retried.
  wrong name: a certificate signed by the trusted CA for another host is refused (IP mismatch).
  no verify: judge.tls_verify = false accepts the wrong CA (the testing switch works).
  bad file:  a missing judge.ca_file is a config error naming it.

Env: DNPO_BIN (build/bin), DNPO_SOURCE_DIR.
"""
import os
import subprocess
import tempfile

from judge_faults import BIN, TEMPLATE, Server, answers, check, read_jsonl, score, write_jsonl


def openssl(work, *args):
    p = subprocess.run(["openssl", *args], cwd=work, capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, f"openssl {' '.join(args)}: {p.stderr}")


def make_ca(work, name):
    openssl(work, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=dnpo test {name}")
    return f"{work}/{name}.pem"


def make_server_cert(work, name, ca, alt_names):
    """A server certificate for `alt_names` signed by CA `ca`; returns (cert, key) paths."""
    openssl(work, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}")
    with open(f"{work}/{name}.ext", "w") as f:
        f.write(f"subjectAltName={alt_names}\nextendedKeyUsage=serverAuth\n")
    openssl(work, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext")
    return f"{work}/{name}.pem", f"{work}/{name}.key"


def main():
    work = tempfile.mkdtemp(prefix="dnpo_judge_tls_")
    ca = make_ca(work, "ca")
    wrong_ca = make_ca(work, "wrong_ca")
    cert, key = make_server_cert(work, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    other_cert, other_key = make_server_cert(work, "other", "ca", "DNS:judge.example")
    rows = answers(24)

    write_jsonl(f"{work}/ref.in.jsonl", rows)
    p = subprocess.run([BIN, "score", "--in", f"{work}/ref.in.jsonl", "--out",
                        f"{work}/ref.out.jsonl"], capture_output=True, text=True, timeout=60)
    check(p.returncode == 0, f"rule backend failed: {p.stderr}")
    reference = {r["id"]: r["score"] for r in read_jsonl(f"{work}/ref.out.jsonl")}

    # --- trusted CA: scored over HTTPS, once each ---
    server = Server(work, "tls", "--tls-cert", cert, "--tls-key", key)
    results, stats, _ = score(work, "trusted", server.port, rows, f'judge.ca_file="{ca}"',
                              "judge.concurrency=4", scheme="https")
    log = server.stop()
    check([r["id"] for r in results] == [r["id"] for r in rows], "ids lost or reordered")
    for r in results:
        check(r["outcome"] == "scored" and r["score"] == reference[r["id"]] and
              r["attempts"] == 1, f"{r['id']} over HTTPS: {r}")
    check(len(log) == len(rows) and all(e["outcome"] == "ok" for e in log),
          f"server log over HTTPS: {len(log)} lines for {len(rows)} answers")
    check(stats["scored"] == len(rows) and stats["retries"] == 0, f"stats {stats}")
    print(f"trusted CA: {len(rows)} answers scored over HTTPS")

    # --- refused certificates: a clear error, nothing sent, nothing retried ---
    server = Server(work, "tls_refused", "--tls-cert", cert, "--tls-key", key)
    for name, ca_file in (("wrong_ca", wrong_ca), ("system_cas", "")):
        results, stats, err = score(work, name, server.port, rows[:1],
                                    f'judge.ca_file="{ca_file}"', 'judge.failure_policy="fail"',
                                    expect_rc=1, scheme="https")
        check(results[0]["outcome"] == "failed" and "after 1 attempts" in results[0]["error"],
              f"{name}: {results}")
        if name == "wrong_ca":
            print(err.strip().splitlines()[-1])
        check("certificate was refused" in err and "unable to get local issuer certificate" in err
              and "judge.ca_file" in err, f"{name}: no clear error: {err}")
        results, stats, _ = score(work, name + "_spin", server.port, rows[:3],
                                  f'judge.ca_file="{ca_file}"', scheme="https")
        check(all(r["outcome"] == "spin_fallback" and r["attempts"] == 1 for r in results),
              f"{name}: a refused certificate was retried or not counted: {results}")
        check(stats["spin_fallback"] == 3 and stats["retries"] == 0, f"{name}: stats {stats}")
    # --- the testing switch ---
    results, stats, _ = score(work, "no_verify", server.port, rows[:3],
                              f'judge.ca_file="{wrong_ca}"', "judge.tls_verify=false",
                              scheme="https")
    check(all(r["outcome"] == "scored" for r in results), f"tls_verify=false: {results}")
    log = server.stop()
    check(len(log) == 3, f"requests past a refused certificate reached the server: {log}")
    print("wrong CA and system CAs: refused with a clear error, not retried")

    # --- a certificate for another name ---
    server = Server(work, "tls_other", "--tls-cert", other_cert, "--tls-key", other_key)
    results, _, err = score(work, "wrong_name", server.port, rows[:1], f'judge.ca_file="{ca}"',
                            'judge.failure_policy="fail"', expect_rc=1, scheme="https")
    log = server.stop()
    check("certificate was refused" in err and "mismatch" in err and "127.0.0.1" in err,
          f"wrong name: no clear error: {err}")
    check(not log, f"wrong name: a request reached the server: {log}")
    print("certificate for another host: refused")

    # --- a missing CA file ---
    p = subprocess.run([BIN, "score", "--in", f"{work}/ref.in.jsonl", "--out",
                        f"{work}/missing.out.jsonl", "--set", 'judge.backend="http"',
                        "--set", 'judge.base_url="https://127.0.0.1:1"',
                        "--set", f'judge.template="{TEMPLATE}"',
                        "--set", f'judge.ca_file="{work}/absent.pem"'],
                       capture_output=True, text=True, timeout=60)
    check(p.returncode == 1 and f"{work}/absent.pem" in p.stderr and "cannot read" in p.stderr,
          f"missing CA file: exit {p.returncode}: {p.stderr}")
    print("judge_tls: all checks passed")


if __name__ == "__main__":
    main()
