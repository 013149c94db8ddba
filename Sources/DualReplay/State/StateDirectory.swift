// A production state: everything a later run needs to continue (onboard a domain, predict, export)
// in one directory of immutable versions. Layout (docs/STATE.md):
//
//   DIR/current -> versions/000003        symlink: the valid state
//   DIR/versions/000003/state.json        manifest: schema, spec, registry, counters, checksums
//                       params.safetensors  param/<name>, adam_m/<name>, adam_v/<name>
//                       buffer.json       replay buffer state (ReplayBufferSnapshot), with ledger
//                       metrics.json      eval rows so far
//                       domains/<k>.jsonl val + test rows of domain k (frozen evaluation data)
//
// A save writes a complete new version into a temporary sibling directory (every file fsynced by
// AtomicFile), renames it into place, then swaps the `current` symlink with rename(2): a crash or
// a full disk at any moment leaves the previous version valid and current.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum StateError: LocalizedError, Equatable {
    case notFound(path: String)
    case alreadyExists(path: String)
    case unreadable(file: String, reason: String)
    case tooLarge(file: String, bytes: Int, limit: Int)
    case wrongSchema(file: String, found: String, expected: Int)
    case malformed(file: String, reason: String)
    case missingFile(file: String)
    case sizeMismatch(file: String, expected: Int, actual: Int)
    case checksumMismatch(file: String, expected: String, actual: String)
    case tensorMismatch(file: String, tensor: String, reason: String)
    case baseModelMismatch(file: String, saved: String, loaded: String)
    case domainExists(name: String, file: String)
    case invalidDomain(file: String, reason: String)
    case saveFailed(path: String, step: String, errno: Int32)
    case notADirectory(path: String)
    case cannotWrite(path: String, reason: String)
    case nonFinite(file: String, tensor: String, index: Int, value: String)
    case noSuchVersion(path: String, version: Int, available: [Int])
    case modelNotFound(path: String, recorded: String)
    case modelMismatch(file: String, recordedPath: String, recordedFingerprint: String, loadedPath: String, loadedFingerprint: String)
    case outputInsideState(output: String, state: String)
    case rollbackRefused(path: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case .notFound(let p): return "\(p): no state here (no `current` link); create one with `onboard --init`"
        case .alreadyExists(let p): return "\(p): a state already exists; drop --init to continue it"
        case let .unreadable(f, r): return "\(f): cannot read: \(r)"
        case let .tooLarge(f, b, l): return "\(f): \(b) bytes, above the limit of \(l) bytes for this file: refusing to read it"
        case let .wrongSchema(f, found, e): return "\(f): state schema version \(found), this build reads version \(e)"
        case let .malformed(f, r): return "\(f): malformed: \(r)"
        case .missingFile(let f): return "\(f): missing (listed in state.json)"
        case let .sizeMismatch(f, e, a): return "\(f): \(a) bytes, state.json records \(e) (truncated or overwritten)"
        case let .checksumMismatch(f, e, a): return "\(f): checksum \(a), state.json records \(e) (the file is corrupted)"
        case let .tensorMismatch(f, t, r): return "\(f): tensor \(t): \(r)"
        case let .baseModelMismatch(f, s, l):
            return "\(f): the state was trained on base model \(s), but the loaded model is \(l); pass the same --model"
        case let .domainExists(n, f): return "\(f): domain \"\(n)\" is already in the state; give the new domain another name"
        case let .invalidDomain(f, r): return "\(f): \(r)"
        case let .saveFailed(p, s, e): return "cannot save \(p): \(s) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .notADirectory(let p): return "\(p): not a directory (--state must name a state directory, or a new one for --init)"
        case let .cannotWrite(p, r): return "\(p): cannot write the state here: \(r)"
        case let .nonFinite(f, t, i, v): return "\(f): tensor \(t): element \(i) is \(v) (the saved parameters are not finite; roll back to an earlier version)"
        case let .noSuchVersion(p, v, a):
            return "\(p): no saved version \(v); saved versions: " + (a.isEmpty ? "none" : a.map(String.init).joined(separator: ", "))
        case let .modelNotFound(p, r):
            return "\(p): the state's base model \(r) is not there; pass --model or set DR_MODEL to where the same model is now"
        case let .modelMismatch(f, rp, rf, lp, lf):
            return "\(f): the state was trained on the base model at \(rp) (fingerprint \(rf)), but \(lp) is another model "
                + "(fingerprint \(lf)); pass the same model with --model or DR_MODEL"
        case let .outputInsideState(o, st):
            return "\(o): inside the state directory \(st); export writes outside it (a file there could replace the live state)"
        case let .rollbackRefused(p, r): return "\(p): cannot roll back: \(r)"
        }
    }
}

// MARK: - Loading and saving

/// The contents of one version, checked: what `ContinualState.restore` rebuilds a model from.
/// Its fields are those of the `StateSnapshot` that `save` wrote (`loaded.manifest`, ...).
@dynamicMemberLookup
public struct LoadedState {
    public var directory: URL
    public var versionDirectory: URL
    public var snapshot: StateSnapshot

    public subscript<T>(dynamicMember field: KeyPath<StateSnapshot, T>) -> T { snapshot[keyPath: field] }
}

/// What `StateDirectory.save` writes (the manifest's `version`, `files` and checksum are filled in).
public struct StateSnapshot {
    public var manifest: StateManifest
    public var values: [Float]
    public var moment1: [Float]
    public var moment2: [Float]
    public var buffer: ReplayBufferSnapshot?
    public var metrics: [MetricsRow]
    public var domainExamples: [[IntentExample]]
    /// The router features of the buffered examples (`RouterFeatureFile`); nil for a state
    /// without a router, or one saved before they were kept.
    public var routerFeatures: [RouterFeatureFile.Entry]? = nil
}

public enum StateDirectory {
    static let zeroChecksum = "0000000000000000"
    public static let manifestName = "state.json"
    public static let paramsName = "params.safetensors"
    public static let bufferName = "buffer.json"
    public static let metricsName = "metrics.json"
    /// Reading limits: a state file larger than this is refused before it is read.
    public static let maxJSONBytes = 1 << 30
    public static let maxManifestBytes = 64 << 20
    /// Versions kept after a save (the current one and its predecessors).
    public static let keptVersions = 3

    public static func exists(_ dir: URL) -> Bool {
        var st = stat()
        return lstat(dir.appendingPathComponent("current").path, &st) == 0
    }

    /// FNV-1a 64, 16 hex digits.
    public static func fnv1a64(_ data: Data) -> String { FNV1a.hex(of: data) }

    static func jsonEncoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return e
    }

    static func jsonDecoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return d
    }

    /// The version directory `current` points to.
    public static func currentVersion(_ dir: URL) throws -> URL {
        let link = dir.appendingPathComponent("current").path
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(link, &buf, buf.count - 1)
        guard n > 0 else { throw StateError.notFound(path: dir.path) }
        let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard !target.hasPrefix("/"), !target.split(separator: "/").contains("..") else {
            throw StateError.malformed(file: link, reason: "the link points outside the state directory (\(target))")
        }
        return dir.appendingPathComponent(target)
    }

    // MARK: Saving

    /// Writes `snapshot` as a new version and makes it current. Returns the version number. On any
    /// failure the previous version stays current and untouched, and the partial one is removed.
    @discardableResult
    public static func save(_ snapshot: StateSnapshot, to dir: URL) throws -> Int {
        let fm = FileManager.default
        let versions = dir.appendingPathComponent("versions")
        try makeDirectory(versions)
        try checkFinite(snapshot, file: versions.path)
        let existing = savedVersionNumbers(dir)
        let version = max(existing.max() ?? 0, snapshot.manifest.version) + 1
        guard versionRange.contains(version) else {
            throw StateError.malformed(file: versions.path, reason: "version \(version) is outside \(versionRange.lowerBound)...\(versionRange.upperBound)")
        }
        let name = versionName(version)
        let temporary = versions.appendingPathComponent(".tmp-\(name)-\(getpid())")
        let final = versions.appendingPathComponent(name)
        try? fm.removeItem(at: temporary)
        var renamed = false
        do {
            try makeDirectory(temporary.appendingPathComponent("domains"))
            var files: [FileRecord] = []
            func put(_ data: Data, _ path: String) throws {
                try AtomicFile.write(data, to: temporary.appendingPathComponent(path))
                files.append(FileRecord(path: path, bytes: data.count, fnv1a64: fnv1a64(data)))
            }
            try put(try paramsFile(snapshot), paramsName)
            let enc = jsonEncoder()
            if let b = snapshot.buffer { try put(try enc.encode(b), bufferName) }
            if let f = snapshot.routerFeatures { try put(try RouterFeatureFile.encode(f), RouterFeatureFile.name) }
            // after a rollback the new version's number is above the one its base would suggest
            var metrics = snapshot.metrics
            if let last = metrics.indices.last, metrics[last].version == snapshot.manifest.version + 1 { metrics[last].version = version }
            try put(try enc.encode(metrics), metricsName)
            var manifest = snapshot.manifest
            for (k, rows) in snapshot.domainExamples.enumerated() {
                let line = JSONEncoder()
                line.outputFormatting = [.sortedKeys]
                var data = Data()
                for r in rows { data.append(try line.encode(r)); data.append(0x0A) }
                manifest.domains[k].dataFile = "domains/\(k).jsonl"
                try put(data, manifest.domains[k].dataFile)
            }
            manifest.version = version
            manifest.files = files
            try AtomicFile.write(try manifestBytes(manifest), to: temporary.appendingPathComponent(manifestName))
            try fsyncDirectory(temporary.appendingPathComponent("domains"))
            try fsyncDirectory(temporary)
            try step("rename", final.path) { rename(temporary.path, final.path) }
            renamed = true
            try fsyncDirectory(versions)
            try pointCurrent(dir, at: name)
        } catch {
            try? fm.removeItem(at: renamed ? final : temporary)
            throw error
        }
        prune(versions, keepingFrom: version - keptVersions + 1)
        return version
    }

    /// Swaps the link: a new symlink `versions/<name>` renamed over `current` (atomic), then fsyncs DIR.
    static func pointCurrent(_ dir: URL, at name: String) throws {
        let link = dir.appendingPathComponent("current"), newLink = dir.appendingPathComponent(".current-\(getpid())")
        unlink(newLink.path)
        try step("symlink", newLink.path) { symlink("versions/\(name)", newLink.path) }
        do {
            try step("rename", link.path) { rename(newLink.path, link.path) }
        } catch {
            unlink(newLink.path)
            throw error
        }
        try fsyncDirectory(dir)
    }

    /// Runs a system call that returns 0 on success; the test hook of `AtomicFile` can fail it.
    static func step(_ name: String, _ path: String, _ call: () -> Int32) throws {
        if let code = AtomicFile.faultInjection?("\(name) \(path)") { throw StateError.saveFailed(path: path, step: name, errno: code) }
        guard call() == 0 else { throw StateError.saveFailed(path: path, step: name, errno: errno) }
    }

    static func fsyncDirectory(_ url: URL) throws {
        if let code = AtomicFile.faultInjection?("fsyncDirectory \(url.path)") {
            throw StateError.saveFailed(path: url.path, step: "fsync directory", errno: code)
        }
        let fd = open(url.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw StateError.saveFailed(path: url.path, step: "open directory", errno: errno) }
        defer { close(fd) }
        if fsync(fd) != 0, errno != EINVAL { throw StateError.saveFailed(path: url.path, step: "fsync directory", errno: errno) }
    }

    /// Removes numbered versions below `first` and stale temporary directories (best effort).
    static func prune(_ versions: URL, keepingFrom first: Int) {
        let fm = FileManager.default
        for entry in (try? fm.contentsOfDirectory(atPath: versions.path)) ?? [] {
            if let n = Int(entry), n < first { try? fm.removeItem(at: versions.appendingPathComponent(entry)) }
            if entry.hasPrefix(".tmp-"), !entry.hasSuffix("-\(getpid())") {
                try? fm.removeItem(at: versions.appendingPathComponent(entry))
            }
        }
    }

    static func paramsFile(_ s: StateSnapshot) throws -> Data {
        var w = SafeTensorsWriter()
        w.metadata = ["format": "dualreplay.state.params/1"]
        for t in s.manifest.tensors {
            let r = t.offset..<(t.offset + t.count)
            try w.add("param/\(t.name)", shape: t.shape, floats: Array(s.values[r]))
            try w.add("adam_m/\(t.name)", shape: t.shape, floats: Array(s.moment1[r]))
            try w.add("adam_v/\(t.name)", shape: t.shape, floats: Array(s.moment2[r]))
        }
        return w.serialized()
    }

    /// The manifest's JSON with its own checksum filled in.
    static func manifestBytes(_ m: StateManifest) throws -> Data {
        var copy = m
        copy.manifestChecksum = zeroChecksum
        let data = try jsonEncoder().encode(copy)
        let sum = fnv1a64(data)
        var text = String(decoding: data, as: UTF8.self)
        guard let r = text.range(of: checksumField(zeroChecksum)) else { preconditionFailure("manifest checksum field not found") }
        text.replaceSubrange(r, with: checksumField(sum))
        return Data(text.utf8)
    }

    private static func checksumField(_ value: String) -> String { "\"manifestChecksum\" : \"\(value)\"" }

    // MARK: Loading

    /// Reads and verifies the current version (or saved version `version`): schema version, every
    /// checksum and size, the version number against its directory, the domain names, the tensors'
    /// names and shapes against the manifest's layout, finite parameter values, the byte budget of
    /// the buffer against the manifest's. Errors name the file.
    public static func load(_ dir: URL, version: Int? = nil) throws -> LoadedState {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir.path, isDirectory: &isDir), isDir.boolValue else {
            throw StateError.notFound(path: dir.path)
        }
        let vdir: URL
        if let version {
            vdir = dir.appendingPathComponent("versions").appendingPathComponent(versionName(version))
            guard versionRange.contains(version), FileManager.default.fileExists(atPath: vdir.appendingPathComponent(manifestName).path) else {
                throw StateError.noSuchVersion(path: dir.path, version: version, available: savedVersionNumbers(dir))
            }
        } else {
            vdir = try currentVersion(dir)
        }
        let manifestURL = vdir.appendingPathComponent(manifestName)
        let manifest = try readManifest(manifestURL)
        // a consistent but forged number would make the next save prune every real version
        guard let number = Int(vdir.lastPathComponent), number == manifest.version, versionRange.contains(number) else {
            throw StateError.malformed(file: manifestURL.path, reason: "version \(manifest.version) does not match its directory "
                                       + "\"\(DisplayText.escaped(vdir.lastPathComponent))\" (versions are \(versionRange.lowerBound)...\(versionRange.upperBound))")
        }
        for d in manifest.domains {
            if let problem = DisplayText.nameProblem(d.name) {
                throw StateError.malformed(file: manifestURL.path, reason: "domain \"\(DisplayText.escaped(d.name))\": \(problem)")
            }
        }

        var contents: [String: Data] = [:]
        for f in manifest.files {
            let parts = f.path.split(separator: "/")
            guard !f.path.hasPrefix("/"), !parts.contains(".."), !parts.isEmpty else {
                throw StateError.malformed(file: manifestURL.path, reason: "file path \"\(f.path)\" leaves the version directory")
            }
            let url = vdir.appendingPathComponent(f.path)
            let size = try fileSize(url)
            guard size == f.bytes else { throw StateError.sizeMismatch(file: url.path, expected: f.bytes, actual: size) }
            let data = try read(url, limit: maxJSONBytes)
            let sum = fnv1a64(data)
            guard sum == f.fnv1a64 else { throw StateError.checksumMismatch(file: url.path, expected: f.fnv1a64, actual: sum) }
            contents[f.path] = data
        }
        func need(_ path: String) throws -> Data {
            guard let d = contents[path] else { throw StateError.missingFile(file: vdir.appendingPathComponent(path).path) }
            return d
        }

        // tensors: names, dtypes and shapes exactly as the layout says
        let paramsURL = vdir.appendingPathComponent(paramsName)
        _ = try need(paramsName)
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(url: paramsURL) } catch {
            throw StateError.malformed(file: paramsURL.path, reason: error.localizedDescription)
        }
        var expected = Set<String>()
        var offset = 0
        for t in manifest.tensors {
            guard t.offset == offset, t.shape.allSatisfy({ $0 >= 0 }) else {
                throw StateError.tensorMismatch(file: manifestURL.path, tensor: t.name, reason: "offset \(t.offset) or shape \(t.shape) breaks the layout")
            }
            offset += t.count
            for p in ["param", "adam_m", "adam_v"] { expected.insert("\(p)/\(t.name)") }
        }
        let found = Set(file.tensors.keys)
        if let extra = found.subtracting(expected).sorted().first {
            throw StateError.tensorMismatch(file: paramsURL.path, tensor: extra, reason: "not in the model's layout")
        }
        if let missing = expected.subtracting(found).sorted().first {
            throw StateError.tensorMismatch(file: paramsURL.path, tensor: missing, reason: "missing")
        }
        var values = [Float](repeating: 0, count: offset), m1 = values, m2 = values
        for t in manifest.tensors {
            for (p, dst) in [("param", 0), ("adam_m", 1), ("adam_v", 2)] {
                let info = try file.info("\(p)/\(t.name)")
                guard info.dtype == .f32 else {
                    throw StateError.tensorMismatch(file: paramsURL.path, tensor: info.name, reason: "dtype \(info.dtype.rawValue), expected F32")
                }
                guard info.shape == t.shape else {
                    throw StateError.tensorMismatch(file: paramsURL.path, tensor: info.name, reason: "shape \(info.shape), the layout says \(t.shape)")
                }
                let x = try file.floats(info.name)
                if let i = x.firstIndex(where: { !$0.isFinite }) {
                    throw StateError.nonFinite(file: paramsURL.path, tensor: info.name, index: i, value: "\(x[i])")
                }
                switch dst {
                case 0: values.replaceSubrange(t.offset..<(t.offset + t.count), with: x)
                case 1: m1.replaceSubrange(t.offset..<(t.offset + t.count), with: x)
                default: m2.replaceSubrange(t.offset..<(t.offset + t.count), with: x)
                }
            }
        }

        let dec = jsonDecoder()
        func decode<T: Decodable>(_ type: T.Type, _ path: String) throws -> T {
            do { return try dec.decode(T.self, from: try need(path)) } catch let e as StateError { throw e } catch let e as DecodingError {
                throw StateError.malformed(file: vdir.appendingPathComponent(path).path, reason: ConfigError.describe(e))
            }
        }
        let buffer = contents[bufferName] == nil ? nil : try decode(ReplayBufferSnapshot.self, bufferName)
        if let buffer {
            let budget: Int
            switch buffer {
            case .dualStream(let b): budget = b.config.byteBudget
            case .reservoir(let b): budget = b.byteBudget
            }
            guard budget == manifest.byteBudget else {
                throw StateError.malformed(file: vdir.appendingPathComponent(bufferName).path,
                                           reason: "byte budget \(budget), state.json records byteBudget \(manifest.byteBudget)")
            }
        }
        let metrics = try decode([MetricsRow].self, metricsName)
        var domainExamples: [[IntentExample]] = []
        for d in manifest.domains {
            let data = try need(d.dataFile)
            var rows: [IntentExample] = []
            for (i, line) in data.split(separator: 0x0A).enumerated() {
                do { rows.append(try dec.decode(IntentExample.self, from: Data(line))) } catch {
                    throw StateError.malformed(file: vdir.appendingPathComponent(d.dataFile).path + ":\(i + 1)", reason: "not an example row")
                }
            }
            domainExamples.append(rows)
        }
        let routerFeatures = contents[RouterFeatureFile.name] == nil ? nil
            : try RouterFeatureFile.decode(vdir.appendingPathComponent(RouterFeatureFile.name), domainCount: manifest.domains.count)
        return LoadedState(directory: dir, versionDirectory: vdir,
                           snapshot: StateSnapshot(manifest: manifest, values: values, moment1: m1, moment2: m2,
                                                   buffer: buffer, metrics: metrics, domainExamples: domainExamples,
                                                   routerFeatures: routerFeatures))
    }

    static func readManifest(_ url: URL) throws -> StateManifest {
        let data = try read(url, limit: maxManifestBytes)
        // the schema version first, so a newer format is reported as such rather than as corrupt
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw StateError.malformed(file: url.path, reason: "not a JSON object")
        }
        guard (obj["format"] as? String) == StateManifest.formatName else {
            throw StateError.malformed(file: url.path, reason: "`format` is not \"\(StateManifest.formatName)\"")
        }
        let version = obj["schemaVersion"]
        guard let v = version as? Int, v == StateManifest.currentSchemaVersion else {
            throw StateError.wrongSchema(file: url.path, found: version.map { "\($0)" } ?? "(missing)", expected: StateManifest.currentSchemaVersion)
        }
        let manifest: StateManifest
        do { manifest = try jsonDecoder().decode(StateManifest.self, from: data) } catch let e as DecodingError {
            throw StateError.malformed(file: url.path, reason: ConfigError.describe(e))
        }
        var text = String(decoding: data, as: UTF8.self)
        guard let r = text.range(of: checksumField(manifest.manifestChecksum)) else {
            throw StateError.malformed(file: url.path, reason: "no manifestChecksum field")
        }
        text.replaceSubrange(r, with: checksumField(zeroChecksum))
        let sum = fnv1a64(Data(text.utf8))
        guard sum == manifest.manifestChecksum else {
            throw StateError.checksumMismatch(file: url.path, expected: manifest.manifestChecksum, actual: sum)
        }
        return manifest
    }

    static func fileSize(_ url: URL) throws -> Int {
        var st = stat()
        guard stat(url.path, &st) == 0 else {
            if errno == ENOENT { throw StateError.missingFile(file: url.path) }
            throw StateError.unreadable(file: url.path, reason: String(cString: strerror(errno)))
        }
        return Int(st.st_size)
    }

    static func read(_ url: URL, limit: Int) throws -> Data {
        let size = try fileSize(url)
        guard size <= limit else { throw StateError.tooLarge(file: url.path, bytes: size, limit: limit) }
        do { return try Data(contentsOf: url) } catch {
            throw StateError.unreadable(file: url.path, reason: error.localizedDescription)
        }
    }
}

