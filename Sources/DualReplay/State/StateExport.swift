// Export of the trained extensions for other runtimes: one safetensors file with the adapter,
// gate table, heads and router (names and shapes in docs/STATE.md), and a JSON config next to it.
import Foundation

/// The JSON written next to an exported safetensors file.
public struct ExportConfig: Codable, Equatable, Sendable {
    public struct Domain: Codable, Equatable, Sendable {
        public var name: String
        /// Row of each `adapter.<s>.gates` table and of `router.w2`; the domain's rows of `head.w`
        /// and `head.b` are `classOffset ..< classOffset + intents.count`.
        public var index: Int
        public var intents: [String]
        public var classOffset: Int
    }
    public static let formatName = "dualreplay.export/2"
    public var format: String = ExportConfig.formatName
    public var baseModelFingerprint: String
    public var hidden: Int
    public var layers: Int
    public var method: String
    /// "output": hidden[l+1] = h + adapter(h) on layer l's output (after its LayerNorm);
    /// "ffn": on the feed-forward output, before the residual LayerNorm.
    public var placement: String
    public var activation: String
    public var bottleneck: Int
    /// Encoder layer of adapter slot s (`adapter.<s>.*`).
    public var adapterLayers: [Int]
    /// The router reads the mean-pooled hidden_states[routerLayer] (0 = embeddings output); nil = no router.
    public var routerLayer: Int?
    public var routerHidden: Int?
    /// Prototype routing (nil = the MLP alone decides): `router.proto` holds one row per global
    /// class; see `PrototypeRouting` for how its cosine scores combine with the MLP.
    public var routerPrototypes: PrototypeRouting?
    public var domains: [Domain]
    /// Every tensor in the file with its shape.
    public var tensors: [String: [Int]]
}

extension ContinualState {
    /// Writes `url` (safetensors, F32) and `url` with extension .json (the config). Both atomically.
    public func export(to url: URL) throws -> ExportConfig {
        let m = model
        var w = SafeTensorsWriter()
        w.metadata = ["format": ExportConfig.formatName]
        var shapes: [String: [Int]] = [:]
        for t in m.store.tensors where ["adapter", "gate", "head", "router", "lora"].contains(t.group) {
            if t.group == "router" && router == nil { continue }
            try w.add(t.name, shape: t.shape, floats: m.store.array(t.name))
            shapes[t.name] = t.shape
        }
        let spec = m.spec
        let cfg = ExportConfig(
            baseModelFingerprint: manifest.baseModel.fingerprint, hidden: m.config.hidden, layers: m.config.layers,
            method: settings.kind.rawValue, placement: spec.placement.rawValue, activation: spec.activation.rawValue,
            bottleneck: spec.bottleneck, adapterLayers: m.adapterLayers, routerLayer: router == nil ? nil : m.routerLayer,
            routerHidden: router == nil ? nil : spec.routerHidden,
            routerPrototypes: router == nil ? nil : spec.routerPrototypes,
            domains: manifest.domains.enumerated().map { ExportConfig.Domain(name: $1.name, index: $0, intents: $1.intents, classOffset: $1.classOffset) },
            tensors: shapes)
        try w.write(to: url)
        try AtomicFile.write(try StateDirectory.jsonEncoder().encode(cfg), to: url.deletingPathExtension().appendingPathExtension("json"))
        return cfg
    }
}
