package lab

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/nsrun"
)

// inNS runs f on a thread switched into the named namespace. A socket
// keeps the namespace it was created in, so only its creation need run
// there.
func inNS(ns string, f func() error) error {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("namespace %s: %w", ns, err)
	}
	defer target.Close()
	return nsrun.Do(target, f)
}

// listenIn opens a TCP listener inside the named namespace.
func listenIn(ns, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNS(ns, func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

const dialTimeout = 5 * time.Second

// dialIn connects to addr from a socket made in namespace ns ("": this
// process's own).
func dialIn(ns, addr string) (net.Conn, error) {
	if ns == "" {
		return net.DialTimeout("tcp", addr, dialTimeout)
	}
	var c net.Conn
	err := inNS(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, dialTimeout)
		return err
	})
	return c, err
}

// relay copies each connection accepted on l to target, dialled from a
// socket made in namespace ns ("": this process's own), until l closes.
func relay(l net.Listener, ns, target string) {
	for {
		in, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer in.Close()
			out, err := dialIn(ns, target)
			if err != nil {
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(out, in); out.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			go func() { _, _ = io.Copy(in, out); in.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

// Expose makes target, a TCP address in the root namespace (a
// kube-apiserver on 127.0.0.1, say), reachable from the hosts at the hub's
// underlay address and port, the way etcd is. It returns that address;
// the relay closes with the cluster.
func (c *Cluster) Expose(port int, target string) (string, error) {
	addr := net.JoinHostPort(nthAddr(c.opts.Underlay, 1).String(), fmt.Sprint(port))
	l, err := listenIn(c.Hub, addr)
	if err != nil {
		return "", fmt.Errorf("expose %s at %s: %w", target, addr, err)
	}
	c.exposed = append(c.exposed, l)
	go relay(l, "", target)
	return addr, nil
}
