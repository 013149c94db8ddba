import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Ctrl-C as a request: the first SIGINT (or SIGTERM) sets a flag that the training loop polls
/// after every step (it then writes a checkpoint and stops cleanly); a second one exits at once,
/// which is safe too, because every file is replaced atomically.
final class Interrupt: @unchecked Sendable {
    static let shared = Interrupt()

    private let lock = NSLock()
    private var raised = false
    private var sources: [DispatchSourceSignal] = []

    var requested: Bool {
        lock.lock(); defer { lock.unlock() }
        return raised
    }

    func install() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [self] in
                lock.lock()
                let again = raised
                raised = true
                lock.unlock()
                if again { _exit(130) }
                printError("dualreplay: stopping after this step (a checkpoint is saved); press Ctrl-C again to quit at once")
            }
            source.resume()
            sources.append(source)
        }
    }
}
