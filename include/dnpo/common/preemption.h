// Preemption requests. SIGUSR1 (send it to mpirun, which forwards it to every rank; Slurm:
// `--signal=B:USR1@120` or `scancel --signal=USR1`) and SIGTERM delivered to the ranks
// themselves (what srun does) set a flag. The training loop reads it at each step boundary,
// where the ranks agree on it with one all-reduce, save a checkpoint and end with exit status 0.
// mpirun turns a SIGTERM it receives into SIGKILL a second later, too soon for a save: under
// mpirun, use SIGUSR1.
#pragma once

namespace dnpo::preemption {

/// Installs the handlers for SIGUSR1 and SIGTERM (idempotent).
void install_handlers();
/// The signal that asked this process to stop (SIGUSR1 or SIGTERM), or 0.
int requested_signal();
/// Sets the flag as a signal would (tests; a rank that must stop for another reason).
void request(int signal_number);
/// Clears the flag (tests).
void clear();

}  // namespace dnpo::preemption
