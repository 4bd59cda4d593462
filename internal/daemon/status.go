package daemon

import (
	"sort"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/backend/backends"
	"github.com/weft-net/weft/internal/lease"
)

// Status is what `weft status` shows of a running daemon: its lease, its
// peers, the skipped leases and the last reconcile pass, plus the desired
// kernel state so that the caller can compare it with the kernel.
type Status struct {
	Lease   LeaseStatus  `json:"lease"`
	Backend string       `json:"backend"`
	Rules   string       `json:"rules,omitempty"` // "iptables", "nftables", or "" when not managed
	Peers   []PeerStatus `json:"peers"`
	// Skipped lists skipped peer leases by their raw store key: at most
	// a few per reason (the daemon keeps no more); SkippedByReason counts
	// them all.
	Skipped         []SkipStatus   `json:"skipped,omitempty"`
	SkippedByReason map[string]int `json:"skippedByReason,omitempty"`
	LastPass        PassStatus     `json:"lastPass"`
	Desired         []string       `json:"desired"` // dataplane.State.Lines()
	Devices         []string       `json:"devices"` // our devices, for a kernel dump
	Extra           map[string]any `json:"extra,omitempty"`
}

// LeaseStatus is this host's lease.
type LeaseStatus struct {
	Subnet     string    `json:"subnet,omitempty"`
	IPv6Subnet string    `json:"ipv6Subnet,omitempty"`
	PublicIP   string    `json:"publicIP,omitempty"`
	PublicIPv6 string    `json:"publicIPv6,omitempty"`
	Expires    time.Time `json:"expires,omitzero"`
	Reserved   bool      `json:"reservation,omitempty"`
}

// PeerStatus is one programmed peer.
type PeerStatus struct {
	Subnet     string `json:"subnet,omitempty"`
	IPv6Subnet string `json:"ipv6Subnet,omitempty"`
	PublicIP   string `json:"publicIP,omitempty"`
	PublicIPv6 string `json:"publicIPv6,omitempty"`
	Backend    string `json:"backend"`
	// Identity names the peer in its backend data (vxlan: the VTEP MAC;
	// wireguard: the public key), per family.
	Identity   string    `json:"identity,omitempty"`
	IdentityV6 string    `json:"identityV6,omitempty"`
	LastSeen   time.Time `json:"lastSeen"`
}

// SkipStatus is a peer lease that is not used, and why.
type SkipStatus struct {
	// Key is the lease's raw store key (etcd key, node name), shortened
	// when very long.
	Key    string `json:"key"`
	Reason string `json:"reason"`
}

// PassStatus describes the last reconcile pass.
type PassStatus struct {
	At     time.Time `json:"at,omitzero"`
	Full   bool      `json:"full"`
	Writes int       `json:"writes"`
	Took   string    `json:"took"`
	Error  string    `json:"error,omitempty"`
}

// Board lets readers on other goroutines (the /v1/status handler) see the
// daemon's status. The desired state is mutated in place by the control
// goroutine on every lease event, so nothing of it may be shared: Get asks
// the control loop, which renders a fresh Status between two events and
// hands it back. A request waits at most for the pass in progress. The
// zero Board is ready; before a control loop is attached (no lease yet)
// and after it ends, Get returns only what the Board itself holds.
type Board struct {
	mu    sync.Mutex
	rules string
	reqs  chan chan Status // served by the control loop; nil when none is
	done  chan struct{}    // closed when that loop detaches
}

// setRules records the masquerade rule mode in use.
func (b *Board) setRules(mode string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rules = mode
}

// attach makes the calling control loop the Board's source: the loop
// must answer every request it receives on reqs, and call detach when it
// stops serving. A nil Board yields a nil channel, which never delivers.
func (b *Board) attach() (reqs <-chan chan Status, detach func()) {
	if b == nil {
		return nil, func() {}
	}
	ch, done := make(chan chan Status), make(chan struct{})
	b.mu.Lock()
	b.reqs, b.done = ch, done
	b.mu.Unlock()
	return ch, func() {
		b.mu.Lock()
		if b.reqs == ch {
			b.reqs, b.done = nil, nil
		}
		b.mu.Unlock()
		close(done)
	}
}

// Get returns the current status.
func (b *Board) Get() Status {
	b.mu.Lock()
	reqs, done, rules := b.reqs, b.done, b.rules
	b.mu.Unlock()
	s := Status{}
	if reqs != nil {
		reply := make(chan Status, 1) // the loop never blocks on it
		select {
		case reqs <- reply:
			s = <-reply
		case <-done:
		}
	}
	s.Rules = rules
	return s
}

// status renders the daemon's status; it runs on the control goroutine,
// which owns everything it reads. Before the first pass there is nothing
// to show but the lease.
func (d *daemon) status() Status {
	s := Status{Backend: d.backend.Type()}
	s.Lease = LeaseStatus{
		Subnet: str(d.self.Subnet), IPv6Subnet: str(d.self.IPv6Subnet),
		PublicIP: str(d.self.Attrs.PublicIP), PublicIPv6: str(d.self.Attrs.PublicIPv6),
		Expires: d.self.Expiration, Reserved: d.self.Reservation,
	}
	if d.lastAt.IsZero() {
		return s
	}
	peers := make([]lease.Lease, 0, len(d.peers))
	for _, p := range d.peers {
		peers = append(peers, p)
	}
	sortByKey(peers)
	for _, p := range peers {
		ps := PeerStatus{
			Subnet: str(p.Subnet), IPv6Subnet: str(p.IPv6Subnet),
			PublicIP: str(p.Attrs.PublicIP), PublicIPv6: str(p.Attrs.PublicIPv6),
			Backend: p.Attrs.BackendType, LastSeen: d.seen[p.ID()],
		}
		ps.Identity, ps.IdentityV6 = backends.Identity(p.Attrs, false), backends.Identity(p.Attrs, true)
		s.Peers = append(s.Peers, ps)
	}
	s.Skipped, s.SkippedByReason = d.skipped.status()
	p := d.last
	s.LastPass = PassStatus{At: d.lastAt, Full: p.Full, Writes: p.Changes.Total(), Took: p.Took.String()}
	if p.Err != nil {
		s.LastPass.Error = p.Err.Error()
	}
	desired := d.desired.State()
	s.Desired = desired.Lines()
	for name := range desired.Links {
		s.Devices = append(s.Devices, name)
	}
	sort.Strings(s.Devices)
	return s
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
