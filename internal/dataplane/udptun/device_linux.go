package udptun

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/internal/nsrun"
)

// Config is what a device is made with. Port and Local are its identity:
// the dataplane makes a new device when either changes.
type Config struct {
	// Name is the TUN device's name (flannel0).
	Name string
	// Local is the address the UDP socket is bound to (invalid: any), the
	// underlay address, as upstream binds its socket.
	Local netip.Addr
	// Port is the UDP port the device listens on.
	Port uint16
}

// sockBuf is the UDP socket's send and receive buffer size.
const sockBuf = 4 << 20

// Stats counts what a device forwarded and dropped.
type Stats struct {
	TxPackets, TxBytes uint64 // sent to peers
	RxPackets, RxBytes uint64 // received from peers and written to the TUN
	// NoPeer: packets for a destination no peer's subnet holds.
	NoPeer uint64
	// Dropped: packets the TTL ran out on, malformed ones, and failed
	// writes.
	Dropped uint64
}

// Device is a TUN device with its forwarder running.
type Device struct {
	log  *slog.Logger
	cfg  Config
	tun  tun.Device
	conn *net.UDPConn

	mu    sync.Mutex // serialises Update
	peers map[netip.Prefix]netip.AddrPort
	table atomic.Pointer[table]

	tx        *txBatch
	rx        *rxBatch
	noGSO     atomic.Bool // the kernel refused UDP segmentation offload
	txPackets atomic.Uint64
	txBytes   atomic.Uint64
	rxPackets atomic.Uint64
	rxBytes   atomic.Uint64
	noPeer    atomic.Uint64
	dropped   atomic.Uint64

	closing   atomic.Bool
	closeOnce sync.Once
	loops     sync.WaitGroup
	done      chan struct{}
}

// Create makes the TUN device and the UDP socket in namespace ns (not
// open: the caller's) and starts forwarding; the table is empty until
// Update. The device's MTU, address, routes and up state are the
// dataplane's to set, through netlink, as for any device.
func Create(log *slog.Logger, ns netns.NsHandle, cfg Config) (*Device, error) {
	if cfg.Name == "" || len(cfg.Name) > 15 {
		return nil, fmt.Errorf("udp device: name %q is not 1 to 15 bytes", cfg.Name)
	}
	if cfg.Local.IsValid() && !cfg.Local.Is4() {
		return nil, fmt.Errorf("udp device %s: local address %s is not IPv4", cfg.Name, cfg.Local)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{log: log, cfg: cfg, peers: map[netip.Prefix]netip.AddrPort{}, done: make(chan struct{})}
	d.table.Store(newTable(nil))
	open := func() error {
		var err error
		if d.tun, err = openTUN(cfg.Name); err != nil {
			return err
		}
		local := netip.IPv4Unspecified()
		if cfg.Local.IsValid() {
			local = cfg.Local
		}
		d.conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, cfg.Port)))
		if err != nil {
			d.tun.Close()
			return fmt.Errorf("udp device %s: listen on %s port %d: %w", cfg.Name, local, cfg.Port, err)
		}
		return nil
	}
	var err error
	if ns.IsOpen() {
		err = nsrun.Do(ns, open)
	} else {
		err = open()
	}
	if err != nil {
		return nil, err
	}
	if err := d.start(); err != nil {
		d.tun.Close()
		d.conn.Close()
		return nil, err
	}
	return d, nil
}

// Config returns what d was made with.
func (d *Device) Config() Config { return d.cfg }

// Update sets the peers in set and removes those in del, then swaps the
// new table in: one rebuild per call.
func (d *Device) Update(set map[netip.Prefix]netip.AddrPort, del []netip.Prefix) error {
	for p, ep := range set {
		if !p.IsValid() || !p.Addr().Is4() || !ep.Addr().Is4() || ep.Port() == 0 {
			return fmt.Errorf("udp device %s: peer %s at %s: want an IPv4 subnet and an IPv4 address and port", d.cfg.Name, p, ep)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range del {
		delete(d.peers, p.Masked())
	}
	for p, ep := range set {
		d.peers[p.Masked()] = ep
	}
	d.table.Store(newTable(d.peers))
	return nil
}

// Peers returns a copy of the table.
func (d *Device) Peers() map[netip.Prefix]netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.peers)
}

// Stats returns the counters.
func (d *Device) Stats() Stats {
	return Stats{
		TxPackets: d.txPackets.Load(), TxBytes: d.txBytes.Load(),
		RxPackets: d.rxPackets.Load(), RxBytes: d.rxBytes.Load(),
		NoPeer: d.noPeer.Load(), Dropped: d.dropped.Load(),
	}
}

// Done is closed once the device has ended: closed, or its netdev
// deleted.
func (d *Device) Done() <-chan struct{} { return d.done }

// Close stops forwarding and closes the TUN, which deletes the netdev;
// it returns once both loops have ended.
func (d *Device) Close() error {
	var err error
	d.closeOnce.Do(func() {
		d.closing.Store(true)
		err = errors.Join(d.tun.Close(), d.conn.Close())
		d.loops.Wait()
	})
	<-d.done
	return err
}

// end is called by a loop that stopped: the device is over, and the
// other loop is stopped too.
func (d *Device) end(loop string, err error) {
	if !d.closing.Load() {
		d.log.Warn("udp device ended", "loop", loop, "err", err)
		d.closeOnce.Do(func() {
			d.closing.Store(true)
			_ = d.tun.Close()
			_ = d.conn.Close()
		})
	}
}

// start runs the two loops; done closes when both have returned.
func (d *Device) start() error {
	sockRaw, err := d.conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("udp device %s: socket: %w", d.cfg.Name, err)
	}
	// Receive offload: datagrams of one flow arrive coalesced (runRx cuts
	// them). A kernel without it delivers them one by one.
	// Socket buffers: the default (~200 KiB) overflows under a burst of
	// 64 KiB segments while the other loop writes the TUN; FORCE (we have
	// CAP_NET_ADMIN) passes net.core.[rw]mem_max.
	_ = sockRaw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_GRO, 1)
		for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], sockBuf) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], sockBuf)
			}
		}
	})
	d.tx = newTxBatch(d, sockRaw)
	d.rx = newRxBatch(d, sockRaw)
	d.loops.Add(2)
	go func() {
		defer d.loops.Done()
		d.end("tun to udp", d.tx.runTx())
	}()
	go func() {
		defer d.loops.Done()
		d.end("udp to tun", d.rx.runRx())
	}()
	go func() {
		d.loops.Wait()
		close(d.done)
	}()
	return nil
}

// closedErr reports whether err means the file or socket was closed.
func closedErr(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}
