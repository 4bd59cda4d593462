package bench

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weft-net/weft/internal/nsrun"
)

// uapiTimeout bounds one UAPI exchange: a get of 20,000 peers is a few
// megabytes of text, produced in well under a second.
const uapiTimeout = 10 * time.Second

// wgReader reads the public keys of one WireGuard device's peers, from
// outside the daemon that configures it. A userspace device (wireguard-go,
// as flanneld runs where the kernel has no WireGuard) is asked over its
// UAPI socket, the text protocol wg(8) speaks, parsed as far as the keys;
// a kernel device through wgctrl's generic netlink, from inside the
// device's namespace (a genetlink socket resolves device names in its
// own). Which one is decided on every read by whether the socket exists,
// because a daemon restart may bring the device back as either.
//
// A wgReader is not safe for concurrent use.
type wgReader struct {
	ns   netns.NsHandle
	dev  string
	sock string // dev's UAPI socket, as seen from this process
	// keys is the last read's result, reused.
	keys map[wgtypes.Key]struct{}
	br   *bufio.Reader
	wg   *wgctrl.Client // made on first use, inside ns
	// gets and getTime count the UAPI exchanges and their wall time: a
	// userspace device runs inside the daemon under test, so each get is
	// served on the daemon's CPU, and the report says how much was asked.
	gets    int
	getTime time.Duration
}

func newWGReader(ns netns.NsHandle, dev, sock string) *wgReader {
	return &wgReader{ns: ns, dev: dev, sock: sock, keys: map[wgtypes.Key]struct{}{}, br: bufio.NewReaderSize(nil, 64<<10)}
}

func (r *wgReader) close() {
	if r.wg != nil {
		r.wg.Close()
	}
}

// read returns the device's peers' public keys; no device (not made yet,
// or ended with its daemon) has none. The map is reused by the next read.
func (r *wgReader) read() (map[wgtypes.Key]struct{}, error) {
	clear(r.keys)
	if _, err := os.Stat(r.sock); err == nil {
		t0 := time.Now()
		err := r.uapiGet()
		r.gets++
		r.getTime += time.Since(t0)
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
			// A socket file left by a daemon that ended, or removed just
			// now: its device went with it.
			clear(r.keys)
			return r.keys, nil
		}
		return r.keys, err
	}
	return r.keys, r.kernelGet()
}

// uapiGet asks the device over its UAPI socket.
func (r *wgReader) uapiGet() error {
	c, err := net.DialTimeout("unix", r.sock, uapiTimeout)
	if err != nil {
		return fmt.Errorf("wireguard %s: %w", r.dev, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(uapiTimeout))
	if _, err := io.WriteString(c, "get=1\n\n"); err != nil {
		return fmt.Errorf("wireguard %s: send get: %w", r.dev, err)
	}
	r.br.Reset(c)
	if err := parseGet(r.br, r.keys); err != nil {
		return fmt.Errorf("wireguard %s: %s: %w", r.dev, r.sock, err)
	}
	return nil
}

// kernelGet reads a kernel device through wgctrl inside the namespace.
func (r *wgReader) kernelGet() error {
	return nsrun.Do(r.ns, func() error {
		if r.wg == nil {
			c, err := wgctrl.New()
			if err != nil {
				return fmt.Errorf("wireguard %s: %w", r.dev, err)
			}
			r.wg = c
		}
		d, err := r.wg.Device(r.dev)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("wireguard %s: %w", r.dev, err)
		}
		// wgctrl falls back to the userspace sockets of this process's own
		// /run/wireguard, which are not the host's: only a kernel device
		// is the one asked for.
		if d.Type != wgtypes.LinuxKernel {
			return nil
		}
		for _, p := range d.Peers {
			r.keys[p.PublicKey] = struct{}{}
		}
		return nil
	})
}

// parseGet reads the response to a UAPI "get=1" (key=value lines, ending
// with errno=N and a blank line; keys in hex) and adds every peer's
// public key to keys. Only public_key lines, which each begin a peer, and
// errno are looked at: the device's own private key comes before the
// first peer and is never kept.
func parseGet(r *bufio.Reader, keys map[wgtypes.Key]struct{}) error {
	errno := -1
	for n := 1; ; n++ {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return fmt.Errorf("line %d: longer than %d bytes", n, r.Size())
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("line %d: response ended before its blank line", n)
		}
		if err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		line = line[:len(line)-1]
		if len(line) == 0 {
			switch {
			case errno < 0:
				return errors.New("response has no errno")
			case errno != 0:
				return fmt.Errorf("device answered errno=%d", errno)
			}
			return nil
		}
		k, v, ok := bytes.Cut(line, []byte{'='})
		if !ok {
			return fmt.Errorf("line %d: no '=' in %q", n, truncate(line))
		}
		switch string(k) {
		case "public_key":
			var key wgtypes.Key
			if hex.DecodedLen(len(v)) != len(key) {
				return fmt.Errorf("line %d: public_key: %d hex digits, want %d", n, len(v), 2*len(key))
			}
			if _, err := hex.Decode(key[:], v); err != nil {
				return fmt.Errorf("line %d: public_key: %w", n, err)
			}
			keys[key] = struct{}{}
		case "errno":
			e, err := strconv.Atoi(string(v))
			if err != nil || e < 0 {
				return fmt.Errorf("line %d: errno %q is not a number", n, truncate(v))
			}
			errno = e
		}
	}
}

// truncate keeps quoted input short in errors.
func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "…"
	}
	return string(b)
}
