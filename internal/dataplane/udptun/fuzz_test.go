package udptun

import (
	"bytes"
	"testing"
)

// FuzzReceivedPacket: a datagram from the network, whatever it holds,
// is either refused untouched or accepted as an IPv4 packet whose TTL went
// down by one, with the header checksum still right, and nothing else
// changed.
func FuzzReceivedPacket(f *testing.F) {
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0x26, 0xd4, 10, 5, 1, 0, 10, 5, 2, 7})
	f.Add([]byte{0x46, 0, 0, 24, 0, 0, 0, 0, 1, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 1, 1, 0})
	f.Add([]byte{0x60, 0, 0, 0})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		orig := bytes.Clone(pkt)
		if !ipv4Header(pkt) || !decTTL(pkt) {
			if !bytes.Equal(pkt, orig) {
				t.Fatalf("refused packet was changed: % x → % x", orig, pkt)
			}
			return
		}
		if pkt[8] != orig[8]-1 {
			t.Fatalf("TTL %d → %d", orig[8], pkt[8])
		}
		if !bytes.Equal(pkt[:8], orig[:8]) || pkt[9] != orig[9] || !bytes.Equal(pkt[12:], orig[12:]) {
			t.Fatalf("more than the TTL and checksum changed: % x → % x", orig, pkt)
		}
		// The checksum over the 20-byte header, recomputed, agrees (as
		// ones' complement: 0x0000 and 0xffff are the same).
		was, is := checksum(orig[:20]), checksum(pkt[:20])
		if orig[10] == byte(was>>8) && orig[11] == byte(was) {
			got := uint16(pkt[10])<<8 | uint16(pkt[11])
			if got != is && !(got == 0xffff && is == 0) && !(got == 0 && is == 0xffff) {
				t.Fatalf("checksum %#04x after the TTL change, want %#04x", got, is)
			}
		}
	})
}
