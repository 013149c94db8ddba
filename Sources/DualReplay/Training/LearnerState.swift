/// What a continual learner carries from one domain to the next: the model and its router, the
/// replay buffers, the training generator and the forgetting signal's reference. The experiment
/// runner keeps one per (method, ordering); a production state (State/ContinualState.swift)
/// saves and restores exactly this.
public final class LearnerState {
    public let model: ContinualModel
    public let router: DomainRouter?
    public var rng: SplitMix64
    /// Best validation F1 of each seen domain so far (the forgetting signal's reference).
    public var bestValidationF1: [Double] = []
    public var reservoir: ReservoirBuffer?
    public var dual: DualStreamBuffer?
    /// Frozen-encoder anchoring targets of the general stream's items, computed once for all of
    /// them in canonical chunks (`DomainTrainer.anchorTargets`): a function of the buffer, not of
    /// which items a step happened to draw first, so a resumed run computes the same bits.
    var anchorTargets: [[Int32]: [Float]] = [:]

    public init(model: ContinualModel, router: DomainRouter?, rng: SplitMix64) {
        self.model = model
        self.router = router
        self.rng = rng
    }

    /// The buffer of whichever kind the method keeps.
    public var buffer: ReplayBuffer? { dual ?? reservoir }

    /// Buffered items of domain `j` (either buffer).
    public func bufferedItems(of j: Int) -> [ReplayItem] {
        dual?.items(of: Int32(j)) ?? reservoir?.items.filter { $0.domain == Int32(j) } ?? []
    }

    /// The router feature keys (`DomainRouter.FeatureKey`) of the buffered domain examples of
    /// every domain before `k`, in `bufferedItems(before:)` order (a repeated example repeats).
    public func routerFeatureKeys(before k: Int) -> [DomainRouter.FeatureKey] {
        bufferedItems(before: k).filter { !$0.isGeneral }.map { DomainRouter.FeatureKey(domain: $0.domain, ids: $0.tokenIds) }
    }

    /// Buffered items of every domain before `k`: the dual stream's domain by domain, the
    /// reservoir's in buffer order.
    public func bufferedItems(before k: Int) -> [ReplayItem] {
        if let dual { return (0..<k).flatMap { dual.items(of: Int32($0)) } }
        return reservoir?.items.filter { $0.domain < Int32(k) } ?? []
    }
}
