package daemon

import (
	"sort"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
)

// Status is what `weft status` shows of a running daemon: its lease, its
// peers, the skipped leases and the last reconcile pass, plus the desired
// kernel state so that the caller can compare it with the kernel.
type Status struct {
	Lease    LeaseStatus    `json:"lease"`
	Backend  string         `json:"backend"`
	Rules    string         `json:"rules,omitempty"` // "iptables", "nftables", or "" when not managed
	Peers    []PeerStatus   `json:"peers"`
	Skipped  []SkipStatus   `json:"skipped,omitempty"`
	LastPass PassStatus     `json:"lastPass"`
	Desired  []string       `json:"desired"` // dataplane.State.Lines()
	Devices  []string       `json:"devices"` // our devices, for a kernel dump
	Extra    map[string]any `json:"extra,omitempty"`
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
	Subnet     string    `json:"subnet,omitempty"`
	IPv6Subnet string    `json:"ipv6Subnet,omitempty"`
	PublicIP   string    `json:"publicIP,omitempty"`
	PublicIPv6 string    `json:"publicIPv6,omitempty"`
	Backend    string    `json:"backend"`
	VtepMAC    string    `json:"vtepMAC,omitempty"`
	VtepMACv6  string    `json:"vtepMACv6,omitempty"`
	LastSeen   time.Time `json:"lastSeen"`
}

// SkipStatus is a peer lease that is not used, and why.
type SkipStatus struct {
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

// Board holds the daemon's latest status for readers on other goroutines.
// The control loop publishes immutable pieces (the peer slice and desired
// state of a pass), so publishing costs a pointer swap, not a copy.
type Board struct {
	mu      sync.Mutex
	self    lease.Lease
	backend string
	peers   []lease.Lease
	seen    []time.Time
	skipped map[lease.ID]string
	desired *dataplane.State
	pass    Pass
	passAt  time.Time
	rules   string
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

func (b *Board) publish(self lease.Lease, backend string, peers []lease.Lease, seen []time.Time, skipped map[lease.ID]string, desired *dataplane.State, p Pass) {
	if b == nil {
		return
	}
	sk := make(map[lease.ID]string, len(skipped))
	for k, v := range skipped {
		sk[k] = v
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.self, b.backend, b.peers, b.seen, b.skipped, b.desired, b.pass, b.passAt = self, backend, peers, seen, sk, desired, p, time.Now()
}

// Get renders the current status.
func (b *Board) Get() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Status{Backend: b.backend, Rules: b.rules}
	s.Lease = LeaseStatus{
		Subnet: str(b.self.Subnet), IPv6Subnet: str(b.self.IPv6Subnet),
		PublicIP: str(b.self.Attrs.PublicIP), PublicIPv6: str(b.self.Attrs.PublicIPv6),
		Expires: b.self.Expiration, Reserved: b.self.Reservation,
	}
	for i, p := range b.peers {
		ps := PeerStatus{
			Subnet: str(p.Subnet), IPv6Subnet: str(p.IPv6Subnet),
			PublicIP: str(p.Attrs.PublicIP), PublicIPv6: str(p.Attrs.PublicIPv6),
			Backend: p.Attrs.BackendType, LastSeen: b.seen[i],
		}
		if p.Attrs.BackendType == config.BackendVXLAN {
			if _, mac, err := vxlan.DecodeData(p.Attrs.BackendData); err == nil {
				ps.VtepMAC = mac.String()
			}
			if _, mac, err := vxlan.DecodeData(p.Attrs.BackendV6Data); err == nil {
				ps.VtepMACv6 = mac.String()
			}
		}
		s.Peers = append(s.Peers, ps)
	}
	for id, reason := range b.skipped {
		s.Skipped = append(s.Skipped, SkipStatus{Key: id.String(), Reason: reason})
	}
	sort.Slice(s.Skipped, func(i, j int) bool { return s.Skipped[i].Key < s.Skipped[j].Key })
	s.LastPass = PassStatus{At: b.passAt, Full: b.pass.Full, Writes: b.pass.Changes.Total(), Took: b.pass.Took.String()}
	if b.pass.Err != nil {
		s.LastPass.Error = b.pass.Err.Error()
	}
	if b.desired != nil {
		s.Desired = b.desired.Lines()
		for name := range b.desired.Links {
			s.Devices = append(s.Devices, name)
		}
		sort.Strings(s.Devices)
	}
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
