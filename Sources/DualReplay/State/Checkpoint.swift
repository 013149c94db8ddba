// The checkpoint of an onboarding in progress: `<state>/checkpoint.safetensors`, written every N
// training steps and when Ctrl-C stops a run, removed once the domain's version is saved. With it,
// `onboard --resume` continues the interrupted domain and ends bit-identical to a run that was
// never interrupted (same thread count). One file, written atomically (temporary file, fsync,
// rename), so a SIGKILL leaves the previous checkpoint or the new one, never a mix.
//
// Layout (documented in docs/STATE.md): F32 tensors `values`, `adam_m`, `adam_v` (the parameter
// store, flat, in the manifest's tensor layout), I64 tensor `order` (the epoch's example order);
// `__metadata__`: format, domain, domainChecksum, baseVersion, baseModel, configChecksum,
// progress (JSON of `PhaseProgress` without `order`) and checksum (FNV-1a 64 of the four tensors'
// bytes, so a flipped bit anywhere in the data is caught).
import Foundation

public enum CheckpointError: LocalizedError, Equatable {
    case malformed(file: String, reason: String)
    case checksumMismatch(file: String, expected: String, actual: String)
    case doesNotMatch(file: String, reason: String)
    case pending(file: String, domain: String, step: Int, total: Int)

    public var errorDescription: String? {
        switch self {
        case let .malformed(f, r): return "\(f): not a usable checkpoint: \(r)"
        case let .checksumMismatch(f, e, a): return "\(f): checksum \(a), the file records \(e) (the checkpoint is corrupted; delete it to start the domain over)"
        case let .doesNotMatch(f, r): return "\(f): \(r); delete the checkpoint to start over"
        case let .pending(f, d, s, t):
            return "\(f): an interrupted onboarding of domain \"\(d)\" is saved here (step \(s)/\(t)); rerun with --resume to continue it, or delete the file to start over"
        }
    }
}

public struct OnboardingCheckpoint: Sendable {
    public static let format = "dualreplay.checkpoint/1"
    public static let fileName = "checkpoint.safetensors"

    /// The domain being trained and a checksum of its rows (`domainChecksum(_:)`).
    public var domain: String
    public var domainChecksum: String
    /// The state version training started from (0: a state created by `--init`).
    public var baseVersion: Int
    /// Fingerprint of the base encoder and checksum of the state's method settings and config.
    public var baseModel: String
    public var configChecksum: String
    public var phase: PhaseCheckpoint

    public init(domain: String, domainChecksum: String, baseVersion: Int, baseModel: String, configChecksum: String, phase: PhaseCheckpoint) {
        self.domain = domain
        self.domainChecksum = domainChecksum
        self.baseVersion = baseVersion
        self.baseModel = baseModel
        self.configChecksum = configChecksum
        self.phase = phase
    }

    public static func url(in stateDirectory: URL) -> URL { stateDirectory.appendingPathComponent(fileName) }

    /// FNV-1a 64 of a domain's rows (all splits, canonical JSON): a changed domain file is noticed.
    public static func domainChecksum(_ d: DomainData) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        var h = FNV1a()
        h.add(Data(d.name.utf8))
        for r in d.train + d.val + d.test + d.multiIntentTest {
            h.add((try? enc.encode(r)) ?? Data())
        }
        return h.hex
    }

    static func dataChecksum(_ p: PhaseCheckpoint) -> String {
        var h = FNV1a()
        p.values.withUnsafeBytes { h.add($0) }
        p.moment1.withUnsafeBytes { h.add($0) }
        p.moment2.withUnsafeBytes { h.add($0) }
        p.progress.order.map(Int64.init).withUnsafeBytes { h.add($0) }
        return h.hex
    }

    /// Writes the checkpoint atomically, creating the state directory if needed.
    public func write(to url: URL) throws {
        try StateDirectory.makeDirectory(url.deletingLastPathComponent())
        var w = SafeTensorsWriter()
        let n = phase.values.count
        try w.add("values", shape: [n], floats: phase.values)
        try w.add("adam_m", shape: [n], floats: phase.moment1)
        try w.add("adam_v", shape: [n], floats: phase.moment2)
        try w.add("order", shape: [phase.progress.order.count], int64s: phase.progress.order.map(Int64.init))
        var progress = phase.progress
        progress.order = []
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        w.metadata = [
            "format": Self.format, "domain": domain, "domainChecksum": domainChecksum, "baseVersion": String(baseVersion),
            "baseModel": baseModel, "configChecksum": configChecksum,
            "progress": String(decoding: try enc.encode(progress), as: UTF8.self), "checksum": Self.dataChecksum(phase),
        ]
        try w.write(to: url)
    }

    /// Reads and verifies a checkpoint; every failure names the file.
    public static func read(_ url: URL) throws -> OnboardingCheckpoint {
        let path = url.path
        let file = try SafeTensorsFile(url: url)
        let meta = file.metadata
        func field(_ k: String) throws -> String {
            guard let v = meta[k] else { throw CheckpointError.malformed(file: path, reason: "metadata field \"\(k)\" missing") }
            return v
        }
        guard try field("format") == format else {
            throw CheckpointError.malformed(file: path, reason: "format \"\(meta["format"] ?? "")\", expected \"\(format)\"")
        }
        guard let baseVersion = Int(try field("baseVersion")), baseVersion >= 0 else {
            throw CheckpointError.malformed(file: path, reason: "baseVersion is not a version number")
        }
        var progress: PhaseProgress
        do {
            progress = try JSONDecoder().decode(PhaseProgress.self, from: Data(try field("progress").utf8))
        } catch let e as CheckpointError {
            throw e
        } catch {
            throw CheckpointError.malformed(file: path, reason: "progress: \(error.localizedDescription)")
        }
        let values = try file.floats("values"), m1 = try file.floats("adam_m"), m2 = try file.floats("adam_v")
        let order = try file.int64s("order")
        guard m1.count == values.count, m2.count == values.count else {
            throw CheckpointError.malformed(file: path, reason: "values, adam_m and adam_v differ in length")
        }
        guard progress.step >= 0, progress.step <= progress.total, progress.next >= 0, progress.next <= order.count, progress.epoch >= 0,
              order.allSatisfy({ $0 >= 0 && $0 < order.count }) else {
            throw CheckpointError.malformed(file: path, reason: "progress out of range")
        }
        progress.order = order.map { Int($0) }
        let phase = PhaseCheckpoint(progress: progress, values: values, moment1: m1, moment2: m2)
        let expected = try field("checksum"), actual = dataChecksum(phase)
        guard expected == actual else { throw CheckpointError.checksumMismatch(file: path, expected: expected, actual: actual) }
        return OnboardingCheckpoint(domain: try field("domain"), domainChecksum: try field("domainChecksum"), baseVersion: baseVersion,
                                    baseModel: try field("baseModel"), configChecksum: try field("configChecksum"), phase: phase)
    }
}
