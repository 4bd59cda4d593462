package udptun

import (
	"net/netip"
	"slices"
)

// table is an immutable snapshot of the peer table: subnets by prefix
// length, longest first, so a lookup finds the most specific entry.
type table struct {
	bits  []int // distinct prefix lengths, longest first
	peers map[tableKey]netip.AddrPort
}

type tableKey struct {
	net  [4]byte // masked
	bits int
}

func newTable(peers map[netip.Prefix]netip.AddrPort) *table {
	t := &table{peers: make(map[tableKey]netip.AddrPort, len(peers))}
	for p, ep := range peers {
		k := tableKey{p.Masked().Addr().As4(), p.Bits()}
		t.peers[k] = ep
		if !slices.Contains(t.bits, p.Bits()) {
			t.bits = append(t.bits, p.Bits())
		}
	}
	slices.Sort(t.bits)
	slices.Reverse(t.bits)
	return t
}

// lookup returns the endpoint of the most specific subnet holding dst.
func (t *table) lookup(dst [4]byte) (netip.AddrPort, bool) {
	v := uint32(dst[0])<<24 | uint32(dst[1])<<16 | uint32(dst[2])<<8 | uint32(dst[3])
	for _, b := range t.bits {
		m := v
		if b < 32 {
			m &^= 1<<(32-b) - 1
		}
		k := tableKey{[4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}, b}
		if ep, ok := t.peers[k]; ok {
			return ep, true
		}
	}
	return netip.AddrPort{}, false
}

// decTTL decrements an IPv4 packet's TTL and patches its header checksum
// incrementally (RFC 1624: the TTL is the high byte of a 16-bit word, so
// the checksum grows by 0x0100, with the end-around carry). It reports
// false, leaving the packet alone, when the TTL would reach zero.
func decTTL(pkt []byte) bool {
	if pkt[8] <= 1 {
		return false
	}
	pkt[8]--
	sum := uint32(pkt[10])<<8 | uint32(pkt[11])
	sum += 0x0100
	sum = (sum & 0xffff) + sum>>16
	pkt[10], pkt[11] = byte(sum>>8), byte(sum)
	return true
}

// ipv4Header reports whether pkt starts with an IPv4 header, whole.
func ipv4Header(pkt []byte) bool {
	return len(pkt) >= 20 && pkt[0]>>4 == 4 && int(pkt[0]&0x0f)*4 <= len(pkt) && pkt[0]&0x0f >= 5
}
