package wguser_test

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/dataplane/wguser"
)

// TestTunnel runs a device in each of two namespaces, configures both
// through wgctrl as a kernel device would be, and pings across the tunnel.
// The test process stays in its own namespace, so the tunnel works only if
// the TUNs and the UDP sockets were made in the devices' namespaces.
func TestTunnel(t *testing.T) {
	a, b := newPair(t)
	s := suffix()
	nameA, nameB := "wtwg"+s+"a", "wtwg"+s+"b"
	log, logs := testLogger(t)
	create(t, log, a, nameA)
	create(t, log, b, nameB)
	for _, name := range []string{nameA, nameB} {
		if !socketExists(t, wguser.SocketPath(name)) {
			t.Fatalf("no UAPI socket %s", wguser.SocketPath(name))
		}
	}

	keyA, keyB := newKey(t), newKey(t)
	portA, portB := 51820, 51821
	c := wgClient(t)
	configure := func(name string, key wgtypes.Key, port int, peer wgtypes.Key, endpoint net.IP, endpointPort int, allowed net.IP) {
		t.Helper()
		err := c.ConfigureDevice(name, wgtypes.Config{
			PrivateKey:   &key,
			ListenPort:   &port,
			ReplacePeers: true,
			Peers: []wgtypes.PeerConfig{{
				PublicKey:         peer,
				Endpoint:          &net.UDPAddr{IP: endpoint, Port: endpointPort},
				ReplaceAllowedIPs: true,
				AllowedIPs:        []net.IPNet{{IP: allowed, Mask: net.CIDRMask(32, 32)}},
			}},
		})
		if err != nil {
			t.Fatalf("configure %s: %v", name, err)
		}
	}
	configure(nameA, keyA, portA, keyB.PublicKey(), vethB.Addr().AsSlice(), portB, tunnelB.Addr().AsSlice())
	configure(nameB, keyB, portB, keyA.PublicKey(), vethA.Addr().AsSlice(), portA, tunnelA.Addr().AsSlice())
	a.addrUp(t, nameA, tunnelA)
	b.addrUp(t, nameB, tunnelB)

	a.ping(t, tunnelB.Addr())
	for _, x := range []struct {
		name      string
		key, peer wgtypes.Key
		port      int
	}{{nameA, keyA, keyB, portA}, {nameB, keyB, keyA, portB}} {
		dev, err := c.Device(x.name)
		if err != nil {
			t.Fatalf("wgctrl device %s: %v", x.name, err)
		}
		if dev.Type != wgtypes.Userspace || dev.PrivateKey != x.key || dev.ListenPort != x.port {
			t.Errorf("%s: type %v, port %d, private key set as given %t; want userspace, port %d, true",
				x.name, dev.Type, dev.ListenPort, dev.PrivateKey == x.key, x.port)
		}
		if len(dev.Peers) != 1 || dev.Peers[0].PublicKey != x.peer.PublicKey() {
			t.Fatalf("%s: peers %d, want the one configured", x.name, len(dev.Peers))
		}
		p := dev.Peers[0]
		if p.LastHandshakeTime.IsZero() || p.ReceiveBytes == 0 || p.TransmitBytes == 0 {
			t.Errorf("%s: last handshake %v, rx %d, tx %d; want a handshake and traffic both ways",
				x.name, p.LastHandshakeTime, p.ReceiveBytes, p.TransmitBytes)
		}
	}

	// A listen port change reopens the sockets on wgctrl's UAPI goroutine:
	// they must land in B's namespace again. A learns B's new port from
	// B's authenticated packets (roaming).
	newPortB := 51831
	if err := c.ConfigureDevice(nameB, wgtypes.Config{ListenPort: &newPortB}); err != nil {
		t.Fatal(err)
	}
	b.ping(t, tunnelA.Addr())
	dev, err := c.Device(nameA)
	if err != nil {
		t.Fatal(err)
	}
	if got := dev.Peers[0].Endpoint; got == nil || got.Port != newPortB {
		t.Errorf("A's endpoint for B after B's port change = %v, want port %d", got, newPortB)
	}

	for _, k := range []wgtypes.Key{keyA, keyB} {
		for _, enc := range []string{hex.EncodeToString(k[:]), base64.StdEncoding.EncodeToString(k[:])} {
			if strings.Contains(logs.String(), enc) {
				t.Errorf("a private key is in the log")
			}
		}
	}
}

func newKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestClose: Close removes the socket and the netdev, closes Done, and may
// be called again.
func TestClose(t *testing.T) {
	ns := newNS(t, "wt"+suffix()+"c")
	name := "wtwg" + suffix() + "c"
	log, _ := testLogger(t)
	d := create(t, log, ns, name)
	if !ns.linkExists(t, name) {
		t.Fatalf("no link %s in %s after Create", name, ns.name)
	}
	select {
	case <-d.Done():
		t.Fatal("Done closed while the device runs")
	default:
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.Done():
	default:
		t.Error("Done not closed after Close returned")
	}
	if socketExists(t, wguser.SocketPath(name)) {
		t.Error("UAPI socket left after Close")
	}
	if ns.linkExists(t, name) {
		t.Error("link left after Close")
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestSocketFiles: a socket file nobody listens on (a crashed run's) is
// replaced; a served one refuses the name before anything is made.
func TestSocketFiles(t *testing.T) {
	ns := newNS(t, "wt"+suffix()+"s")
	log, _ := testLogger(t)
	if err := os.MkdirAll(wguser.SocketDir, 0o755); err != nil {
		t.Fatal(err)
	}
	listen := func(name string) *net.UnixListener {
		t.Helper()
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: wguser.SocketPath(name), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}

	t.Run("stale", func(t *testing.T) {
		name := "wtwg" + suffix() + "s"
		l := listen(name)
		l.SetUnlinkOnClose(false)
		l.Close()
		t.Cleanup(func() { os.Remove(wguser.SocketPath(name)) })
		create(t, log, ns, name)
		if _, err := wgClient(t).Device(name); err != nil {
			t.Errorf("wgctrl on the replaced socket: %v", err)
		}
	})

	t.Run("live", func(t *testing.T) {
		name := "wtwg" + suffix() + "l"
		l := listen(name)
		t.Cleanup(func() { l.Close() })
		d, err := wguser.Create(log, ns.h, name, 1420)
		if err == nil {
			d.Close()
			t.Fatal("Create took over a served socket")
		}
		if !errors.Is(err, wguser.ErrInUse) {
			t.Errorf("err = %v, want ErrInUse", err)
		}
		if ns.linkExists(t, name) {
			t.Error("a link was made for a refused name")
		}
		c, err := net.Dial("unix", wguser.SocketPath(name))
		if err != nil {
			t.Fatalf("the other process's socket no longer answers: %v", err)
		}
		c.Close()
	})
}

// TestEndsOnItsOwn: deleting the netdev from outside, or removing the UAPI
// socket file, ends the device and cleans up the rest.
func TestEndsOnItsOwn(t *testing.T) {
	ns := newNS(t, "wt"+suffix()+"e")
	log, _ := testLogger(t)

	t.Run("link deleted", func(t *testing.T) {
		name := "wtwg" + suffix() + "d"
		d := create(t, log, ns, name)
		l, err := ns.nl.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := ns.nl.LinkDel(l); err != nil {
			t.Fatal(err)
		}
		waitDone(t, d)
		if socketExists(t, wguser.SocketPath(name)) {
			t.Error("UAPI socket left after the link went away")
		}
	})

	t.Run("socket removed", func(t *testing.T) {
		name := "wtwg" + suffix() + "r"
		d := create(t, log, ns, name)
		if err := os.Remove(wguser.SocketPath(name)); err != nil {
			t.Fatal(err)
		}
		waitDone(t, d)
		if ns.linkExists(t, name) {
			t.Error("link left after the socket was removed")
		}
	})
}

// TestCreateRefusesBadInput: each bad argument is named in the error.
func TestCreateRefusesBadInput(t *testing.T) {
	ns, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	log, _ := testLogger(t)
	for _, tc := range []struct {
		name  string
		ns    netns.NsHandle
		mtu   int
		field string
	}{
		{"", ns, 1420, "name"},
		{"..", ns, 1420, "name"},
		{"a/b", ns, 1420, "name"},
		{"wg%d", ns, 1420, "name"},
		{"wtwgabcdefghijkl", ns, 1420, "name"},
		{"wtwgx", ns, 0, "mtu"},
		{"wtwgx", ns, 70000, "mtu"},
		{"wtwgx", netns.None(), 1420, "ns"},
	} {
		d, err := wguser.Create(log, tc.ns, tc.name, tc.mtu)
		if err == nil {
			d.Close()
			t.Errorf("Create(%q, %d) succeeded", tc.name, tc.mtu)
			continue
		}
		if !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("Create(%q, %d) = %v, want an error about %s", tc.name, tc.mtu, err, tc.field)
		}
	}
}
