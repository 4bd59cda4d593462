// Package udptun is the data path of the udp backend: a TUN device
// (flannel0) served inside flanneld by a forwarder that carries the IPv4
// packets the kernel routes into the device to the host owning their
// destination, each as the payload of one UDP datagram, and writes the
// packets arriving on its UDP socket back into the device.
//
// The wire format is upstream flannel's: the UDP payload is the inner IPv4
// packet itself, no header of ours, so a weft host and an upstream host
// running its C proxy exchange packets (e2e TestUDPMixedCluster). As
// upstream does, the forwarder decrements the inner TTL once when it sends
// a packet and once when it receives one (fixing the header checksum
// incrementally, RFC 1624), and drops a packet whose TTL runs out; the
// overlay therefore counts as two hops, on both implementations alike.
//
// Peers: the forwarder's table maps a peer's subnet to the peer's public
// address and port. The dataplane (dataplane.KindUDP, dataplane.UDPPeer)
// owns it declaratively: it sets and removes entries from the backend's
// plan and reads the table back in a full pass, like WireGuard peers. The
// table is an immutable snapshot swapped atomically, rebuilt once per
// Update call (a pass writes its changes in one call), so the packet path
// takes no lock: a lookup is one map probe per distinct prefix length
// (one, in a network with one SubnetLen).
//
// Hot path: the TUN carries virtio-net headers with the kernel's
// segmentation offloads on (wireguard-go's tun code, as a library), so a
// TCP burst of up to 64 KiB is one read(2), cut into packets in
// userspace, and packets written to it are coalesced per flow (GRO) into
// few write(2)s. A run of equal-sized packets to one peer leaves in one
// sendmmsg(2) message with UDP_SEGMENT, which the kernel (or the NIC) cuts
// into datagrams; datagrams arrive coalesced per flow (UDP_GRO) through
// recvmmsg(2) and are cut back into packets. Each datagram on the wire is
// still one packet, so upstream's proxy, which uses none of this, reads
// ours and writes what ours reads. Buffers, message headers, control
// messages and socket addresses are allocated once per device; the path
// allocates nothing per packet.
//
// Lifetime: the TUN is not persistent, so it goes away when the device is
// closed or flanneld exits, as upstream's does; a restarted flanneld
// makes it again and its first pass refills the table (the kernel flushes
// the routes through the device with it, and the pass puts them back).
// Deleting the netdev ends the device (Done), and the dataplane makes a
// new one.
package udptun
