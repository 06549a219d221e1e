"""Build of the C extension; everything else about the package is in pyproject.toml.

``pip install -e .`` and ``python setup.py build_ext --inplace`` both build
``offload_target._ctable`` (the table, _ctable.c, and its data path, _datapath.c, sharing
_ctable.h) and ``vnic._tapio`` (the TAP's TX/RX rings and their threads, _tapio.c).
Environment:

- ``VNIC_SANITIZE=1``: build with AddressSanitizer + UndefinedBehaviorSanitizer
  (``scripts/asan-tests.sh`` does this in a scratch copy and runs the table and ring tests).
- ``VNIC_DEBUG=1``: keep ``assert()`` (undefine NDEBUG) and build with ``-O0 -g``.
"""

import os

from setuptools import Extension, setup

CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-O2"]
LDFLAGS: list[str] = []
UNDEF: list[str] = []

if os.environ.get("VNIC_SANITIZE") == "1":
    # -fno-sanitize-recover makes every UBSan finding fatal even without UBSAN_OPTIONS.
    # -fno-wrapv undoes CPython's -fwrapv (from sysconfig CFLAGS) for this build only: with
    # -fwrapv, signed overflow and shifts into the sign bit are defined, so UBSan would not
    # check them.
    SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
           "-fno-omit-frame-pointer", "-fno-wrapv", "-g"]
    CFLAGS += SAN
    LDFLAGS += SAN
if os.environ.get("VNIC_DEBUG") == "1":
    CFLAGS += ["-O0", "-g"]
    UNDEF.append("NDEBUG")

setup(
    ext_modules=[
        Extension(
            "offload_target._ctable",
            sources=["offload_target/_ctable.c", "offload_target/_datapath.c"],
            depends=["offload_target/_ctable.h", "include/vnic_inet_sum.h"],
            include_dirs=["include"],
            extra_compile_args=CFLAGS,
            extra_link_args=LDFLAGS,
            undef_macros=UNDEF,
        ),
        Extension(
            # the TAP's TX/RX rings served by C threads (vnic/tap.py, docs/internals.md)
            "vnic._tapio",
            sources=["vnic/_tapio.c"],
            depends=["include/vnic_inet_sum.h"],
            include_dirs=["include"],
            extra_compile_args=CFLAGS + ["-pthread"],
            extra_link_args=LDFLAGS + ["-pthread"],
            undef_macros=UNDEF,
        ),
    ],
)
