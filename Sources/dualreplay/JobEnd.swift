import ArgumentParser
import DualReplay
import Foundation

/// How a process of an MPI job ends. Under a launcher, ranks other than 0 keep quiet about what
/// every rank sees alike (argument errors, `JobError`, an exit status after an interrupt): rank 0
/// reports it, every rank leaves MPI and exits with the same status. A failure of one rank alone
/// (an unreadable file on one node, an MPI error) is printed with its rank and aborts the job
/// (MPI_Abort), so the other ranks never wait for it.
enum JobEnd {
    /// The rank the launcher gave this process (0 when started by hand or the launcher is unknown).
    static var launchedRank: Int { (try? Launch.detect())?.rank ?? 0 }

    /// Only `run`, `demo`, `onboard` and `mpi-check` know how to share work over ranks; the other verbs would
    /// run once per rank (and race on their files).
    static func checkVerb(_ command: ParsableCommand) throws {
        guard let launch = try? Launch.detect(), launch.isLaunched, (launch.size ?? 2) > 1 else { return }
        guard command is RunCommand || command is DemoCommand || command is OnboardCommand || command is MPICheckCommand else {
            let name = type(of: command).configuration.commandName ?? "this verb"
            throw ValidationError("`\(name)` runs in one process: start it without mpirun or srun (only run, demo, onboard and mpi-check use MPI ranks)")
        }
    }

    static func exit(with error: Error) -> Never {
        guard let job = Cluster.current, job.size > 1 else {
            // one process (or a rank that never joined MPI): as ArgumentParser ends
            if launchedRank == 0 { DualReplayCommand.exit(withError: error) }
            Foundation.exit(DualReplayCommand.exitCode(for: error).rawValue)
        }
        if error is JobError || error is ExitCode || error is ValidationError {
            if job.rank == 0, !(error is ExitCode) { printError("Error: " + DualReplayCommand.message(for: error)) }
            // the others wait until rank 0 has reported: the launcher stops the job at the first non-zero exit
            try? job.barrier()
            Cluster.finish()
            Foundation.exit(DualReplayCommand.exitCode(for: error).rawValue)
        }
        printError("Error: rank \(job.rank) of \(job.size): \(DualReplayCommand.message(for: error)); stopping every rank of the job")
        job.abort(code: 1)
    }
}
