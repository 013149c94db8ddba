// Crash-safe file replacement: write a temporary file next to the target, fsync it, rename it over
// the target, fsync the directory. rename(2) is atomic within a file system, so a reader (or a
// restart after a crash) sees either the complete old file or the complete new one.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum AtomicFile {
    /// The steps of a save, in order. A fault-injection hook receives "<step> <target path>".
    public enum Step: String, Sendable {
        case create, write, fsync, close, rename, fsyncDirectory

        var action: String {
            switch self {
            case .create: return "creating the temporary file"
            case .write: return "writing the temporary file"
            case .fsync: return "flushing the temporary file to disk"
            case .close: return "closing the temporary file"
            case .rename: return "renaming the temporary file over the target"
            case .fsyncDirectory: return "flushing the directory to disk (the new file is in place but may not survive a crash)"
            }
        }
    }

    /// Writes `data` to `url` so that a crash at any moment leaves either the old file or the new one:
    /// write to a temporary file in the same directory, fsync it, rename over the target, fsync the
    /// directory. On failure before the rename the temporary file is removed and the target untouched.
    public static func write(_ data: Data, to url: URL) throws {
        try replace(url) { fd, path in
            try data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) in
                var offset = 0
                repeat {  // at least one step, so even an empty file passes the `write` check
                    if let code = injectedFault(.write, path) { throw AtomicFileError.failed(step: .write, path: path, errno: code) }
                    let n = bytes.count - offset
                    if n == 0 { break }
                    let written = posixWrite(fd, bytes.baseAddress! + offset, min(n, 1 << 30))
                    if written < 0 {
                        if errno == EINTR { continue }
                        throw AtomicFileError.failed(step: .write, path: path, errno: errno)
                    }
                    offset += written
                } while offset < bytes.count
            }
        }
    }

    /// Streaming variant: `body` writes the new content through the handle (use the throwing
    /// `write(contentsOf:)`; do not close the handle, it is closed here). If `body` throws, the target is untouched and the error is rethrown;
    /// a write error carrying an errno (e.g. ENOSPC) is reported as `AtomicFileError` naming the target.
    public static func write(to url: URL, _ body: (FileHandle) throws -> Void) throws {
        try replace(url) { fd, path in
            if let code = injectedFault(.write, path) { throw AtomicFileError.failed(step: .write, path: path, errno: code) }
            let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
            do {
                try body(handle)
            } catch {
                if let code = posixCode(of: error) { throw AtomicFileError.failed(step: .write, path: path, errno: code) }
                // a Foundation file error without an errno would not name the file: name it here
                if (error as NSError).domain == NSCocoaErrorDomain { throw AtomicFileError.failedWith(path: path, reason: error.localizedDescription) }
                throw error
            }
        }
    }

    // MARK: Fault injection (tests)

    private static let hookLock = NSLock()
    nonisolated(unsafe) private static var hook: ((String) -> Int32?)?

    /// Test hook, consulted before every step with "<step> <target path>" (step names: `Step`
    /// raw values). Returning an errno makes that step fail as if the system call had.
    static var faultInjection: ((String) -> Int32?)? {
        get { hookLock.lock(); defer { hookLock.unlock() }; return hook }
        set { hookLock.lock(); defer { hookLock.unlock() }; hook = newValue }
    }

    private static func injectedFault(_ step: Step, _ path: String) -> Int32? {
        faultInjection?("\(step.rawValue) \(path)")
    }

    // MARK: The protocol

    private static func replace(_ url: URL, fill: (Int32, String) throws -> Void) throws {
        let path = url.path
        let directory = url.deletingLastPathComponent().path
        let temporary = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path

        // Keep the permissions of a file being replaced; a new file gets 0666 minus the umask.
        var existing = stat()
        let mode: mode_t = stat(path, &existing) == 0 ? existing.st_mode & 0o7777 : 0o666

        if let code = injectedFault(.create, path) { throw AtomicFileError.failed(step: .create, path: path, errno: code) }
        let fd = posixOpen(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw AtomicFileError.failed(step: .create, path: path, errno: errno) }
        if mode != 0o666 { _ = fchmod(fd, mode) }

        var isOpen = true
        do {
            try fill(fd, path)
            if let code = injectedFault(.fsync, path) { throw AtomicFileError.failed(step: .fsync, path: path, errno: code) }
            guard fsync(fd) == 0 else { throw AtomicFileError.failed(step: .fsync, path: path, errno: errno) }
            if let code = injectedFault(.close, path) { throw AtomicFileError.failed(step: .close, path: path, errno: code) }
            isOpen = false
            guard close(fd) == 0 else { throw AtomicFileError.failed(step: .close, path: path, errno: errno) }
            if let code = injectedFault(.rename, path) { throw AtomicFileError.failed(step: .rename, path: path, errno: code) }
            guard rename(temporary, path) == 0 else { throw AtomicFileError.failed(step: .rename, path: path, errno: errno) }
        } catch {
            if isOpen { close(fd) }
            unlink(temporary)
            throw error
        }

        // The rename is durable only once the directory entry is on disk. Some file systems do not
        // support fsync on a directory (EINVAL); nothing more can be done there.
        if let code = injectedFault(.fsyncDirectory, path) { throw AtomicFileError.failed(step: .fsyncDirectory, path: path, errno: code) }
        let dirfd = posixOpen(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)
        guard dirfd >= 0 else { throw AtomicFileError.failed(step: .fsyncDirectory, path: path, errno: errno) }
        defer { close(dirfd) }
        if fsync(dirfd) != 0, errno != EINVAL {
            throw AtomicFileError.failed(step: .fsyncDirectory, path: path, errno: errno)
        }
    }

    /// The errno behind a Foundation file error, if there is one.
    private static func posixCode(of error: Error) -> Int32? {
        let ns = error as NSError
        if ns.domain == NSPOSIXErrorDomain { return Int32(ns.code) }
        if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return Int32(underlying.code)
        }
        return nil
    }
}

// File-scope wrappers: inside `AtomicFile` the name `write` would resolve to its own methods.
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buffer, count) }
private func posixOpen(_ path: String, _ flags: Int32, _ mode: mode_t) -> Int32 { open(path, flags, mode) }

public enum AtomicFileError: LocalizedError, Equatable {
    /// `step` failed while saving `path` (the target); `errno` is the system error.
    case failed(step: AtomicFile.Step, path: String, errno: Int32)
    /// Writing `path` failed with an error that carries no errno (its description is `reason`).
    case failedWith(path: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .failed(step, path, code):
            return "cannot save \(path): \(step.action) failed: \(String(cString: strerror(code))) (errno \(code))"
        case let .failedWith(path, reason):
            return "cannot save \(path): \(reason)"
        }
    }
}
