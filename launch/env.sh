# Sourced by launch/ scripts: environment for running dnpo and its tests on this machine.
# OpenBLAS inside VMs may not detect the CPU and fall back to slow generic kernels; pick the kernel
# from the CPU flags (dnpo_dist does the same itself; this covers Python peers and tools).
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -r /proc/cpuinfo ]; then
  _dnpo_flags="$(grep -m1 '^flags' /proc/cpuinfo) "
  if [[ "$_dnpo_flags" == *" avx512f "* && "$_dnpo_flags" == *" avx512bw "* && "$_dnpo_flags" == *" avx512vl "* ]]; then
    export OPENBLAS_CORETYPE=SkylakeX
  elif [[ "$_dnpo_flags" == *" avx2 "* && "$_dnpo_flags" == *" fma "* ]]; then
    export OPENBLAS_CORETYPE=Haswell
  fi
  unset _dnpo_flags
fi
# Open MPI refuses to run as root without these (containers and CI machines run as root).
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"
