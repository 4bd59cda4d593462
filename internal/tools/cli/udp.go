package cli

import (
	"fmt"
	"io"

	"github.com/weft-net/weft/internal/dataplane"
)

// printUDP shows the daemon's udp devices: socket, table size and
// forwarding counters (the table itself is in the drift check).
func printUDP(w io.Writer, devs []dataplane.UDPStatus) {
	for _, d := range devs {
		s := d.Stats
		local := "any"
		if d.Local.IsValid() {
			local = d.Local.String()
		}
		fmt.Fprintf(w, "udp %s: forwarder in flanneld, %s port %d, %d peers; sent %d packets (%s), received %d (%s), %d without a peer, %d dropped\n",
			d.Name, local, d.Port, len(d.Peers), s.TxPackets, bytesIEC(int64(s.TxBytes)), s.RxPackets, bytesIEC(int64(s.RxBytes)), s.NoPeer, s.Dropped)
	}
}
