package udptun

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestTableLookupLongestPrefix(t *testing.T) {
	ep := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	tb := newTable(map[netip.Prefix]netip.AddrPort{
		netip.MustParsePrefix("10.5.1.0/24"):   ep("198.18.100.1:8285"),
		netip.MustParsePrefix("10.5.2.0/24"):   ep("198.18.100.2:8285"),
		netip.MustParsePrefix("10.5.2.128/25"): ep("198.18.100.3:8285"),
		netip.MustParsePrefix("10.6.0.0/16"):   ep("198.18.100.4:9000"),
	})
	for dst, want := range map[string]string{
		"10.5.1.7":   "198.18.100.1:8285",
		"10.5.2.7":   "198.18.100.2:8285",
		"10.5.2.200": "198.18.100.3:8285",
		"10.6.77.1":  "198.18.100.4:9000",
		"10.5.3.1":   "",
	} {
		got, ok := tb.lookup(netip.MustParseAddr(dst).As4())
		if want == "" {
			if ok {
				t.Errorf("lookup %s = %s, want none", dst, got)
			}
			continue
		}
		if !ok || got != ep(want) {
			t.Errorf("lookup %s = %s %v, want %s", dst, got, ok, want)
		}
	}
}

// checksum is the IPv4 header checksum computed from scratch.
func checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		if i == 10 {
			continue
		}
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func TestDecTTLKeepsChecksumRight(t *testing.T) {
	h := []byte{0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 5, 1, 0, 10, 5, 2, 7}
	// Walk every TTL and many checksum starting points (the identification
	// field shifts the sum), including the ones near the carry.
	for id := 0; id < 1<<16; id += 97 {
		binary.BigEndian.PutUint16(h[4:], uint16(id))
		h[8] = 255
		binary.BigEndian.PutUint16(h[10:], checksum(h))
		for ttl := 254; ttl >= 1; ttl-- {
			if !decTTL(h) {
				t.Fatalf("id %d: decTTL refused TTL %d", id, ttl+1)
			}
			if got, want := binary.BigEndian.Uint16(h[10:]), checksum(h); got != want && !(got == 0xffff && want == 0) && !(got == 0 && want == 0xffff) {
				t.Fatalf("id %d ttl %d: checksum %#04x, want %#04x", id, ttl, got, want)
			}
		}
		if decTTL(h) || h[8] != 1 {
			t.Fatalf("id %d: TTL 1 was decremented to %d", id, h[8])
		}
	}
}

func TestIPv4Header(t *testing.T) {
	ok := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}
	if !ipv4Header(ok) {
		t.Error("a 20-byte IPv4 header was refused")
	}
	for name, p := range map[string][]byte{
		"short": ok[:19],
		"ipv6":  append([]byte{0x60}, ok[1:]...),
		"ihl 4": append([]byte{0x44}, ok[1:]...),
		"ihl 6": append([]byte{0x46}, ok[1:]...), // options past the end
	} {
		if ipv4Header(p) {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestGROSize(t *testing.T) {
	cm := func(level, typ int32, data []byte) []byte {
		b := make([]byte, unix.CmsgSpace(len(data)))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = level, typ
		h.SetLen(unix.CmsgLen(len(data)))
		copy(b[unix.SizeofCmsghdr:], data)
		return b
	}
	gro := make([]byte, 4)
	binary.NativeEndian.PutUint32(gro, 1444)
	for _, tc := range []struct {
		name string
		oob  []byte
		want int
	}{
		{"none", nil, 0},
		{"gro", cm(unix.SOL_UDP, unix.UDP_GRO, gro), 1444},
		{"after another", append(cm(unix.SOL_IP, unix.IP_TOS, []byte{0, 0, 0, 0}), cm(unix.SOL_UDP, unix.UDP_GRO, gro)...), 1444},
		{"truncated", cm(unix.SOL_UDP, unix.UDP_GRO, gro)[:12], 0},
		{"length past the end", func() []byte { b := cm(unix.SOL_UDP, unix.UDP_GRO, gro); b[0] = 200; return b }(), 0},
		{"length zero", func() []byte { b := cm(unix.SOL_UDP, unix.UDP_GRO, gro); clear(b[:8]); return b }(), 0},
	} {
		if got := groSize(tc.oob); got != tc.want {
			t.Errorf("%s: groSize = %d, want %d", tc.name, got, tc.want)
		}
	}
}
