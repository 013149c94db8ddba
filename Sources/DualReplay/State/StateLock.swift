// The writer's lock of a state directory: every verb that writes a state (onboard, with or without
// --init or --resume, rollback) holds it for its whole run, so two writers never interleave (two
// onboardings would otherwise both save "the next version" and one domain would silently be lost).
//
// DIR/lock is locked with flock(2) (exclusive, non-blocking) and holds a line of JSON naming the
// holder: pid, host, start time, verb. The kernel drops a flock when its process dies, however it
// dies, so a lock left by a killed run is simply free: the next run takes it, says whose it was, and
// may clean up what the dead run left (`StateDirectory.removeStaleTemporaries`). A normal exit
// empties the file, so a non-empty file found on taking the lock names a writer that died.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum StateLockError: LocalizedError, Equatable {
    case held(directory: String, holder: StateLock.Holder?)
    case cannotLock(directory: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .held(d, h?):
            return "\(d): the state is locked by another dualreplay run: pid \(h.pid) on host \(DisplayText.escaped(h.host)), "
                + "`\(DisplayText.escaped(h.verb))` since \(DisplayText.escaped(h.started)); wait for it to finish "
                + "(a lock whose process has died is taken over by the next run)"
        case let .held(d, nil):
            return "\(d): the state is locked by another dualreplay run (it has not written its name yet); wait for it to finish"
        case let .cannotLock(d, r):
            return "\(d): cannot lock the state directory: \(r)"
        }
    }
}

public final class StateLock {
    /// Who holds (or held) the lock: the JSON line inside DIR/lock.
    public struct Holder: Codable, Equatable, Sendable {
        public var pid: Int32
        public var host: String
        /// ISO 8601.
        public var started: String
        /// The verb and its main arguments, e.g. "onboard --init".
        public var verb: String
    }

    public static let fileName = "lock"

    public let directory: URL
    /// The holder found in the lock file when it was taken: a writer that died without releasing.
    public let previous: Holder?
    private var fd: Int32

    private init(directory: URL, previous: Holder?, fd: Int32) {
        self.directory = directory
        self.previous = previous
        self.fd = fd
    }

    deinit { release() }

    public static func url(in dir: URL) -> URL { dir.appendingPathComponent(fileName) }

    public static var hostName: String {
        var buf = [CChar](repeating: 0, count: 256)
        guard gethostname(&buf, buf.count - 1) == 0 else { return "unknown" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Takes the lock of `dir` or throws `StateLockError.held` naming the holder. With `create`,
    /// a missing `dir` is created first (`onboard --init`); without it, a missing `dir` is
    /// `StateError.notFound`.
    public static func acquire(_ dir: URL, verb: String, create: Bool) throws -> StateLock {
        if create {
            try StateDirectory.makeDirectory(dir)
        } else {
            try StateDirectory.requireDirectory(dir)
        }
        let path = url(in: dir).path
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw StateLockError.cannotLock(directory: dir.path, reason: "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno == EINTR { continue }
            let code = errno
            defer { close(fd) }
            if code == EWOULDBLOCK {
                // the holder writes its name right after locking: give it a moment
                var holder = readHolder(fd)
                for _ in 0..<20 where holder == nil {
                    usleep(10_000)
                    holder = readHolder(fd)
                }
                throw StateLockError.held(directory: dir.path, holder: holder)
            }
            throw StateLockError.cannotLock(directory: dir.path, reason: "flock \(path): \(String(cString: strerror(code)))")
        }
        let previous = readHolder(fd)
        let me = Holder(pid: getpid(), host: hostName, started: ISO8601DateFormatter().string(from: Date()), verb: verb)
        var line = (try? JSONEncoder().encode(me)) ?? Data()
        line.append(0x0A)
        let wrote = ftruncate(fd, 0) == 0 && line.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } == line.count
        guard wrote else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw StateLockError.cannotLock(directory: dir.path, reason: "cannot write \(path): \(reason)")
        }
        _ = fsync(fd)
        return StateLock(directory: dir, previous: previous, fd: fd)
    }

    /// The holder named in the lock file (nil if empty or unreadable).
    private static func readHolder(_ fd: Int32) -> Holder? {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = pread(fd, &buf, buf.count, 0)
        guard n > 0 else { return nil }
        return try? JSONDecoder().decode(Holder.self, from: Data(buf[0..<n]))
    }

    /// Empties the lock file (a clean exit) and releases the lock. Also done on deinit.
    public func release() {
        guard fd >= 0 else { return }
        _ = ftruncate(fd, 0)
        _ = flock(fd, LOCK_UN)
        close(fd)
        fd = -1
    }
}
