// Crash injection for the resume-after-kill tests: the CLI reads `DR_CRASH_AT` and the process
// kills itself with SIGKILL (no cleanup, no buffered writes flushed) at a chosen moment:
//   step:N     right after the N-th training step this process runs (after that step's checkpoint)
//   interrupt:N  sends itself SIGINT (Ctrl-C) after the N-th step instead: the clean-stop path
//   stop:N     sends itself SIGSTOP after the N-th step: a live run, frozen (holding the state lock)
//              until the test sends SIGCONT or SIGKILL
//   rename:S   just before the rename that publishes a finished temporary file or version
//              directory whose path contains S (e.g. `rename:checkpoint`, `rename:versions`)
//   evalfail:N   the N-th inference chunk this process computes (`ShardedInference`) throws
//              instead (an error on one rank alone, not a kill)
// Unset, nothing changes. Never set it in production.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

public enum CrashInjection {
    struct InjectedFailure: LocalizedError { var errorDescription: String? }

    public static let environmentVariable = "DR_CRASH_AT"

    /// Installs the rename hook if `spec` asks for one; returns the per-step hook (nil if none).
    public static func install(_ spec: String?) -> ((Int) -> Void)? {
        guard let spec, let colon = spec.firstIndex(of: ":") else { return nil }
        let kind = spec[..<colon], arg = String(spec[spec.index(after: colon)...])
        switch kind {
        case "step", "interrupt", "stop":
            guard let n = Int(arg), n > 0 else { return nil }
            let sig = kind == "step" ? SIGKILL : kind == "stop" ? SIGSTOP : SIGINT
            var steps = 0
            return { _ in
                steps += 1
                if steps == n { kill(getpid(), sig) }
            }
        case "evalfail":
            guard let n = Int(arg), n > 0 else { return nil }
            ShardedInference.faultInjection = { done in
                if done + 1 == n { throw InjectedFailure(errorDescription: "injected failure in inference chunk \(n) (\(spec))") }
            }
            return nil
        case "rename":
            AtomicFile.faultInjection = { op in
                if op.hasPrefix("rename "), op.contains(arg) { kill(getpid(), SIGKILL) }
                return nil
            }
            return nil
        default:
            return nil
        }
    }
}
