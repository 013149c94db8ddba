import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Versions, rollback, checks before writing

/// One saved version, as `dualreplay state --list` shows it.
public struct SavedVersion: Equatable, Sendable {
    public var version: Int
    public var isCurrent: Bool
    /// Domains in training order; nil when the manifest could not be read (`problem` says why).
    public var domains: [String]?
    public var createdAt: String?
    public var problem: String?
}

extension StateDirectory {
    /// Version numbers: `versions/` holds six-digit names; anything above is refused on load.
    public static let versionRange = 1...999_999

    static func versionName(_ version: Int) -> String { String(format: "%06d", version) }

    /// The numbers of the version directories under DIR/versions, ascending.
    public static func savedVersionNumbers(_ dir: URL) -> [Int] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("versions").path)) ?? []
        return names.compactMap { n in n.count == 6 && n.allSatisfy(\.isASCII) ? Int(n) : nil }.filter(versionRange.contains).sorted()
    }

    /// Every saved version with its domains (each manifest verified by its checksum).
    public static func list(_ dir: URL) throws -> [SavedVersion] {
        try requireDirectory(dir)
        guard exists(dir) else { throw StateError.notFound(path: dir.path) }
        let current = try? currentVersion(dir).lastPathComponent
        return savedVersionNumbers(dir).map { v in
            let url = dir.appendingPathComponent("versions").appendingPathComponent(versionName(v)).appendingPathComponent(manifestName)
            var entry = SavedVersion(version: v, isCurrent: current == versionName(v))
            do {
                let m = try readManifest(url)
                entry.domains = m.domains.map(\.name)
                entry.createdAt = m.createdAt
                if m.version != v { entry.problem = "state.json records version \(m.version)" }
            } catch {
                entry.problem = error.localizedDescription
            }
            return entry
        }
    }

    /// Makes saved version `version` current again: it is loaded and verified completely first,
    /// then `current` is switched to it by one rename. Nothing is deleted; the versions after it
    /// stay listed and can be made current the same way. Call it holding the `StateLock`.
    public static func makeCurrent(_ dir: URL, version: Int) throws {
        _ = try load(dir, version: version)
        try pointCurrent(dir, at: versionName(version))
    }

    /// Creates `url` and its missing parents; errors name the path (a regular file in the way,
    /// a read-only file system, no permission) instead of a Foundation error code.
    public static func makeDirectory(_ url: URL) throws {
        var st = stat()
        if stat(url.path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFDIR else { throw StateError.notADirectory(path: url.path) }
            return
        }
        let code = errno
        let parent = url.deletingLastPathComponent()
        if code == ENOTDIR || code == ENOENT, parent.path != url.path, !parent.path.isEmpty {
            do { try makeDirectory(parent) } catch StateError.notADirectory(let file) {
                throw StateError.cannotWrite(path: url.path, reason: "\(file) is not a directory")
            }
        }
        if mkdir(url.path, 0o755) != 0 && errno != EEXIST {
            throw StateError.cannotWrite(path: url.path, reason: "cannot create the directory: \(String(cString: strerror(errno)))")
        }
    }

    /// `dir` must exist and be a directory.
    public static func requireDirectory(_ dir: URL) throws {
        var st = stat()
        guard stat(dir.path, &st) == 0 else {
            if errno == ENOTDIR { throw StateError.notADirectory(path: dir.path) }
            throw StateError.notFound(path: dir.path)
        }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw StateError.notADirectory(path: dir.path) }
    }

    /// Fails early, naming the path, if a new version could not be written into `dir`: creates,
    /// writes, fsyncs and removes a probe file in `dir` and in `dir/versions` (if present). The
    /// fault-injection hook of `AtomicFile` sees "probe <path>".
    public static func checkWritable(_ dir: URL) throws {
        try requireDirectory(dir)
        var places = [dir]
        let versions = dir.appendingPathComponent("versions")
        if FileManager.default.fileExists(atPath: versions.path) { places.append(versions) }
        for place in places {
            let probe = place.appendingPathComponent(".probe-\(getpid())").path
            if let code = AtomicFile.faultInjection?("probe \(place.path)") {
                throw StateError.cannotWrite(path: place.path, reason: String(cString: strerror(code)))
            }
            let fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw StateError.cannotWrite(path: place.path, reason: String(cString: strerror(errno))) }
            var byte: UInt8 = 0x0A
            let ok = pwrite(fd, &byte, 1, 0) == 1 && fsync(fd) == 0
            let code = errno
            close(fd)
            unlink(probe)
            guard ok else { throw StateError.cannotWrite(path: place.path, reason: String(cString: strerror(code))) }
        }
    }

    /// Removes what killed writers leave behind: temporary files of `AtomicFile`
    /// (`.<name>.tmp-<pid>-<n>`), half-written version directories (`versions/.tmp-N-<pid>`),
    /// unpublished links (`.current-<pid>`) and probes. Only call it holding the `StateLock`: then
    /// no other writer is running, so every such entry not of this process belongs to a dead one.
    /// Returns the removed paths.
    @discardableResult
    public static func removeStaleTemporaries(_ dir: URL) -> [String] {
        let fm = FileManager.default
        let mine = "\(getpid())"
        func pidOf(_ name: String, after marker: String) -> String? {
            guard let r = name.range(of: marker) else { return nil }
            return String(name[r.upperBound...].prefix { $0.isNumber })
        }
        var removed: [String] = []
        for place in [dir, dir.appendingPathComponent("versions")] {
            for name in (try? fm.contentsOfDirectory(atPath: place.path)) ?? [] where name.hasPrefix(".") {
                let pid: String?
                if name.hasPrefix(".tmp-") {
                    pid = name.split(separator: "-").last.map(String.init)  // .tmp-<version>-<pid>
                } else if name.hasPrefix(".current-") || name.hasPrefix(".probe-") {
                    pid = pidOf(name, after: "-")
                } else {
                    pid = pidOf(name, after: ".tmp-")
                }
                guard let pid, !pid.isEmpty, pid != mine else { continue }
                let url = place.appendingPathComponent(name)
                if (try? fm.removeItem(at: url)) != nil || unlink(url.path) == 0 { removed.append(url.path) }
            }
        }
        return removed
    }

    /// True when `path` (existing or not) lies inside `dir` once symlinks and `..` are resolved,
    /// compared by device and inode so a second mount or link of the directory is caught too.
    public static func contains(_ dir: URL, _ path: URL) -> Bool {
        var target = stat()
        guard stat(dir.path, &target) == 0 else { return false }
        // the deepest existing ancestor of `path`, resolved; the rest does not exist (no links in it)
        var existing = path.standardizedFileURL
        while realpath(existing.path, nil) == nil, existing.path != "/" { existing = existing.deletingLastPathComponent() }
        guard let resolved = realpath(existing.path, nil) else { return false }
        var current = String(cString: resolved)
        free(resolved)
        while true {
            var st = stat()
            if stat(current, &st) == 0, st.st_dev == target.st_dev, st.st_ino == target.st_ino { return true }
            if current == "/" || current.isEmpty { return false }
            current = (current as NSString).deletingLastPathComponent
        }
    }

    /// Refuses a snapshot whose parameters or moments are not finite (it could not be restored).
    static func checkFinite(_ s: StateSnapshot, file: String) throws {
        for t in s.manifest.tensors {
            for (prefix, array) in [("param", s.values), ("adam_m", s.moment1), ("adam_v", s.moment2)] {
                let r = min(t.offset, array.count)..<min(array.count, t.offset + t.count)
                if let i = array[r].firstIndex(where: { !$0.isFinite }) {
                    throw StateError.nonFinite(file: file, tensor: "\(prefix)/\(t.name)", index: i - t.offset, value: "\(array[i])")
                }
            }
        }
    }
}
