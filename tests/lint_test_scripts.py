#!/usr/bin/python3
"""The Python test scripts check with calls that raise (check(cond, msg)), never with `assert`
statements, which `python -O` / PYTHONOPTIMIZE strips: a test run so would pass whatever happened.
Lists every assert statement in the Python files under tests/ and benchmarks/peers/ (the golden
comparisons); exits 1 if there is one.

Usage: lint_test_scripts.py [ROOT]   (ROOT: the source tree; default $DNPO_SOURCE_DIR)
"""
import ast
import os
import sys


def python_files(root):
    for folder in ("tests", os.path.join("benchmarks", "peers")):
        for parent, _, names in os.walk(os.path.join(root, folder)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(parent, name)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.environ["DNPO_SOURCE_DIR"]
    found = []
    files = 0
    for path in python_files(root):
        files += 1
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        lines = sorted(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert))
        found += [f"{os.path.relpath(path, root)}:{line}: an assert statement (python -O strips "
                  "it): use check(cond, msg)" for line in lines]
    if files < 20:
        print(f"lint_test_scripts: only {files} Python files under {root}: wrong root?")
        return 1
    for line in found:
        print(line)
    if found:
        return 1
    print(f"lint_test_scripts: no assert statement in {files} Python files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
