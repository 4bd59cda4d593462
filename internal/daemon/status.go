package daemon

import (
	"encoding/json"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/backend/backends"
	"github.com/weft-net/weft/internal/cow"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/desired"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
)

// DefaultMinRender is Board.MinRender's default. At 5,000 peers a
// rendering costs about 30 ms of CPU and 18 MB of short-lived garbage for
// 1.7 MB of JSON (BenchmarkStatusRender5000), so a flood of status
// requests during constant churn costs at most ~6% of one core; the status
// a reader gets is at most this much older than the last pass.
const DefaultMinRender = 500 * time.Millisecond

// Board lets readers on other goroutines (the /v1/status handler) see the
// daemon's status without asking the control loop for anything. After
// each pass the loop publishes a snapshot: the lease, the last pass, and
// a copy-on-write snapshot of the peer records (cow.Slab: O(1) to take;
// the loop's next write to a chunk of 256 records copies that chunk's
// pointers) and the skipped leases. Everything costly — sorting K peers,
// naming them, composing the desired state from each peer's planned
// objects, encoding JSON — is done by a reader, only when something was
// published since the last rendering, and at most once per MinRender:
// within MinRender of a rendering, readers get that one even if the loop
// has published since (so what they read may be that much out of date).
// Concurrent readers wait for one rendering and share it. A flood of
// status requests therefore never delays a pass, and costs the process at
// most one rendering per MinRender.
//
// The zero Board is ready. Before a control loop publishes (no lease yet)
// and after it ends, readers get only what the Board itself holds.
type Board struct {
	// MinRender is the least time between two renderings; 0 means
	// DefaultMinRender. Set it before use.
	MinRender time.Duration
	// StoreDown, if set, says since when the lease store has been
	// unreachable (zero while it answers), for Status.Store; a change of
	// it makes a new rendering. Set it before use.
	StoreDown func() time.Time
	// UDP, if set, reports the udp devices the daemon serves, for
	// Status.UDP. Set it before use.
	UDP func() []dataplane.UDPStatus

	mu     sync.Mutex
	rules  string
	prober *prober   // nil until the loop starts probing (or not)
	snap   *snapshot // nil when no loop publishes
	gen    uint64    // bumped by every change of the above

	rendering sync.Mutex // held while rendering: one at a time
	last      *rendered  // guarded by rendering
	renders   int        // guarded by rendering; for tests
}

// snapshot is what the control loop publishes after a pass. Nothing in it
// is written afterwards: the peers' snapshot is immutable, base and
// fallback are planned once, and each peer's objects are replaced, never
// modified, when its lease changes.
type snapshot struct {
	backend string
	// planner plans the peers' objects again for the desired state shown
	// (the backend: its Peer reads only what was fixed at its start).
	planner peerPlanner
	host    httpapi.HostStatus
	self    lease.Lease
	own     ownState
	peers   cow.Snapshot[*peer]
	// skipped are the example keys and the counts per reason (skipSet),
	// a few hundred entries at most, copied at each publish.
	skipped         []httpapi.SkipStatus
	skippedByReason map[string]int
	last            Pass
	lastAt          time.Time
	base            *dataplane.State
	fallback        dataplane.Objects
}

// peerPlanner is what render needs of the backend.
type peerPlanner interface {
	Peer(self, p lease.Lease) (dataplane.Objects, error)
}

type rendered struct {
	gen    uint64
	probes uint64    // the prober's version it was made with
	down   time.Time // Board.StoreDown's answer it was made with
	at     time.Time // when the rendering started
	status httpapi.Status
	json   []byte
}

// peer is a programmed peer, kept small because the slab holds one per
// peer (by pointer: a snapshot's chunk copies then copy pointers, and a
// record is replaced, never modified): its lease's ID and attributes and
// when they last changed. The objects planned for it are the desired
// state's alone; render plans them again, which gives the same (planners
// are deterministic).
type peer struct {
	id          lease.ID
	attrs       lease.Attrs
	seen        int64 // Unix nanoseconds
	reservation bool
}

// lease is the peer's lease as the daemon uses it (a peer's expiry and
// revision are not kept: nothing reads them).
func (p *peer) lease() lease.Lease {
	return lease.Lease{Subnet: p.id.V4, IPv6Subnet: p.id.V6, Attrs: p.attrs, Reservation: p.reservation}
}

// setRules records the masquerade rule mode in use.
func (b *Board) setRules(mode string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rules = mode
	b.gen++
}

// setProber makes the status show pr's results.
func (b *Board) setProber(pr *prober) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.prober = pr
	b.gen++
}

// publish makes s the current snapshot; nil withdraws it (the loop ended).
func (b *Board) publish(s *snapshot) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.snap = s
	b.gen++
}

// Get returns the current status. It is shared with other callers and
// must not be modified.
func (b *Board) Get() httpapi.Status { return b.current().status }

// JSON returns the current status as JSON, shared with other callers:
// the body of /v1/status.
func (b *Board) JSON() []byte { return b.current().json }

// current returns the last rendering if nothing was published since or
// it is younger than MinRender, else a new one. Readers arriving during a
// rendering wait for it (on the mutex) and then share it.
func (b *Board) current() *rendered {
	b.rendering.Lock()
	defer b.rendering.Unlock()
	b.mu.Lock()
	snap, gen, rules, pr := b.snap, b.gen, b.rules, b.prober
	b.mu.Unlock()
	probes := pr.version()
	var down time.Time
	if b.StoreDown != nil {
		down = b.StoreDown()
	}
	// (With no snapshot, since the loop ended, there is nothing to wait
	// for: an empty status costs nothing.)
	if r := b.last; r != nil && r.down.Equal(down) && ((r.gen == gen && r.probes == probes) || (snap != nil && time.Since(r.at) < b.minRender())) {
		return r
	}
	r := &rendered{gen: gen, probes: probes, down: down, at: time.Now()}
	b.renders++
	r.status = snap.render()
	r.status.Rules = rules
	if snap != nil {
		r.status.Health = pr.health()
	}
	r.status.Store = httpapi.StoreStatus{Reachable: down.IsZero(), UnreachableSince: down}
	if b.UDP != nil {
		r.status.UDP = b.UDP()
	}
	js, err := json.Marshal(r.status)
	if err != nil { // plain data: only a value put in Extra could fail
		js, _ = json.Marshal(map[string]string{"error": "encode status: " + err.Error()})
	}
	r.json = append(js, '\n')
	b.last = r
	return r
}

// renderings returns how many renderings were made.
func (b *Board) renderings() int {
	b.rendering.Lock()
	defer b.rendering.Unlock()
	return b.renders
}

func (b *Board) minRender() time.Duration {
	if b.MinRender > 0 {
		return b.MinRender
	}
	return DefaultMinRender
}

// publish hands the Board a snapshot of the daemon's state (after a pass,
// or once the lease is held). It costs O(1) in the peers: their map is
// shared copy-on-write; the skipped leases are a bounded few examples. Without a Board nothing is shared, so the maps
// never copy a shard.
func (d *daemon) publish() {
	if d.cfg.Status == nil {
		return
	}
	snap := &snapshot{
		backend: d.backend.Type(), planner: d.backend, host: d.host, self: d.self, own: d.own,
		peers: d.peers.Snapshot(),
		last:  d.last, lastAt: d.lastAt,
		base: d.base, fallback: d.fallback,
	}
	snap.skipped, snap.skippedByReason = d.skipped.status()
	d.cfg.Status.publish(snap)
}

// render renders a snapshot (nil: no daemon, an empty status). Before the
// first pass there is nothing to show but the lease.
func (s *snapshot) render() httpapi.Status {
	if s == nil {
		return httpapi.Status{}
	}
	st := httpapi.Status{Backend: s.backend, Host: s.host}
	st.Lease = httpapi.LeaseStatus{
		Subnet: str(s.self.Subnet), IPv6Subnet: str(s.self.IPv6Subnet),
		PublicIP: str(s.self.Attrs.PublicIP), PublicIPv6: str(s.self.Attrs.PublicIPv6),
		Expires: s.self.Expiration, Reserved: s.self.Reservation,
		State: leaseState(s.self, s.own), LapsedSince: s.own.lapsed,
	}
	if s.lastAt.IsZero() {
		return st
	}
	type seenLease struct {
		lease lease.Lease
		seen  int64
	}
	peers := make([]seenLease, 0, s.peers.Len())
	for _, p := range s.peers.All() {
		peers = append(peers, seenLease{p.lease(), p.seen})
	}
	slices.SortFunc(peers, func(a, b seenLease) int { return lease.CompareID(a.lease.ID(), b.lease.ID()) })
	// The desired state, composed afresh from each peer's planned objects:
	// the winner of a key declared twice does not depend on the order of
	// arrival, so this is the loop's incrementally kept state.
	want := desired.New(s.base, len(peers))
	want.SetFallback(s.fallback, nil)
	st.Peers = make([]httpapi.PeerStatus, 0, len(peers))
	for _, p := range peers {
		l := p.lease
		ps := httpapi.PeerStatus{
			Subnet: str(l.Subnet), IPv6Subnet: str(l.IPv6Subnet),
			PublicIP: str(l.Attrs.PublicIP), PublicIPv6: str(l.Attrs.PublicIPv6),
			Backend: l.Attrs.BackendType, LastSeen: time.Unix(0, p.seen),
		}
		ps.Identity, ps.IdentityV6 = backends.Identity(l.Attrs, false), backends.Identity(l.Attrs, true)
		st.Peers = append(st.Peers, ps)
		if objs, err := s.planner.Peer(s.self, l); err == nil {
			want.SetPeer(l, objs, nil)
		}
	}
	st.Skipped, st.SkippedByReason = s.skipped, s.skippedByReason
	p := s.last
	st.LastPass = httpapi.PassStatus{At: s.lastAt, Full: p.Full, Writes: p.Changes.Total(), Took: p.Took.String()}
	if p.Err != nil {
		st.LastPass.Error = p.Err.Error()
	}
	st.Desired = want.Copy().Lines()
	for name := range s.base.Links {
		st.Devices = append(st.Devices, name)
	}
	sort.Strings(st.Devices)
	return st
}

type validator interface{ IsValid() bool }

func str[T interface {
	validator
	String() string
}](v T) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}

// leaseState is httpapi.LeaseStatus.State.
func leaseState(self lease.Lease, own ownState) string {
	switch {
	case own.taken != nil:
		return "lost: " + own.taken.Error()
	case !own.lapsed.IsZero():
		return "lapsed, reclaiming"
	case !self.Reservation && !self.Expiration.IsZero() && time.Now().After(self.Expiration):
		return "renewal overdue"
	}
	return "held"
}
