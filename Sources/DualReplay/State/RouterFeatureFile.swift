// `router-features.safetensors` in a state version: the router features of the buffered examples
// (`DomainRouter.trainingFeatures`), so that the next `onboard` retrains the router on the same
// bits an uninterrupted run would use, without recomputing them one example at a time.
//
// Layout (docs/STATE.md): F32 `features` (n, C); I64 `domain` (n), `offsets` (n+1) and
// `token_ids` (offsets[n]): entry i is the example of domain `domain[i]` with token ids
// `token_ids[offsets[i]..<offsets[i+1]]`. `__metadata__`: format. The manifest records the file's
// size and FNV-1a checksum like every other file of the version.
import Foundation

public enum RouterFeatureFile {
    public static let name = "router-features.safetensors"
    public static let format = "dualreplay.state.router-features/1"

    public typealias Entry = (key: DomainRouter.FeatureKey, feature: [Float])

    /// The file's bytes; every feature must have the same length.
    static func encode(_ entries: [Entry]) throws -> Data {
        let C = entries.first?.feature.count ?? 0
        var features: [Float] = [], domains: [Int64] = [], offsets: [Int64] = [0], ids: [Int64] = []
        features.reserveCapacity(entries.count * C)
        for e in entries {
            precondition(e.feature.count == C, "router features of different lengths")
            features += e.feature
            domains.append(Int64(e.key.domain))
            ids += e.key.ids.map(Int64.init)
            offsets.append(Int64(ids.count))
        }
        var w = SafeTensorsWriter()
        w.metadata = ["format": format]
        try w.add("features", shape: [entries.count, C], floats: features)
        try w.add("domain", shape: [entries.count], int64s: domains)
        try w.add("offsets", shape: [entries.count + 1], int64s: offsets)
        try w.add("token_ids", shape: [ids.count], int64s: ids)
        return w.serialized()
    }

    /// Reads and checks the file (already size- and checksum-verified against the manifest):
    /// format, shapes, finite values, domains below `domainCount`,
    /// offsets that run from 0 to the token count without going back. Errors name the file.
    static func decode(_ url: URL, domainCount: Int) throws -> [Entry] {
        let path = url.path
        func bad(_ reason: String) -> StateError { .malformed(file: path, reason: reason) }
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(url: url) } catch { throw bad("\(error.localizedDescription)") }
        guard file.metadata["format"] == format else { throw bad("format \"\(file.metadata["format"] ?? "")\", expected \"\(format)\"") }
        let f: [Float], domains: [Int64], offsets: [Int64], ids: [Int64]
        do {
            f = try file.floats("features")
            domains = try file.int64s("domain")
            offsets = try file.int64s("offsets")
            ids = try file.int64s("token_ids")
        } catch { throw bad(error.localizedDescription) }
        let shape = try file.info("features").shape
        let n = domains.count
        guard shape.count == 2, shape[0] == n else { throw bad("features have shape \(shape) for \(n) entries") }
        let C = shape[1]
        guard offsets.count == n + 1, offsets.first == 0, offsets.last == Int64(ids.count) else {
            throw bad("offsets must run from 0 to the \(ids.count) token ids in \(n + 1) steps")
        }
        if let i = f.firstIndex(where: { !$0.isFinite }) { throw StateError.nonFinite(file: path, tensor: "features", index: i, value: "\(f[i])") }
        var out: [Entry] = []
        out.reserveCapacity(n)
        for i in 0..<n {
            guard domains[i] >= 0, domains[i] < Int64(domainCount) else { throw bad("entry \(i): domain \(domains[i]) outside 0..<\(domainCount)") }
            let a = Int(offsets[i]), b = Int(offsets[i + 1])
            guard a <= b else { throw bad("entry \(i): offsets go back (\(a) then \(b))") }
            let seq = ids[a..<b]
            if let t = seq.first(where: { $0 < 0 || $0 > Int64(Int32.max) }) { throw bad("entry \(i): token id \(t) outside 0...\(Int32.max)") }
            out.append((DomainRouter.FeatureKey(domain: Int32(domains[i]), ids: seq.map { Int32($0) }), Array(f[(i * C)..<((i + 1) * C)])))
        }
        return out
    }
}
