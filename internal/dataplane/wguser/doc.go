// Package wguser serves a userspace WireGuard device (wireguard-go over
// /dev/net/tun) inside the calling process, for hosts whose kernel has no
// WireGuard module.
//
// The device is made to look like a kernel one to everything else: it is a
// netdev of the given name (a TUN), configured through the standard UAPI
// socket /var/run/wireguard/<name>.sock, which is where
// golang.zx2c4.com/wireguard/wgctrl and `wg` look for userspace devices. So
// code that configures WireGuard through wgctrl, and addresses and routes
// through netlink, needs no second path for the userspace case: only the
// creation of the device differs.
//
// # Network namespaces
//
// Three things wireguard-go does take their namespace from the OS thread
// that happens to do them, not from the device:
//
//   - the TUN netdev is created in the namespace current when /dev/net/tun
//     is opened and TUNSETIFF runs;
//   - the UDP sockets are opened (conn.Bind Open) whenever the device goes
//     up or its listen port changes, on whichever goroutine asks;
//   - the TUN's MTU is read (after every link notification) through an
//     AF_INET socket and an ioctl by name.
//
// So the TUN is created inside nsrun.Do, and, when the target namespace is
// not the process's own, the bind and the TUN are wrapped so that Open and
// MTU run inside nsrun.Do too; the sockets and the TUN fd keep their
// namespace once made, so reads and writes need no switching. In the
// process's own namespace (the daemon's case) the plain StdNetBind is kept,
// because wireguard-go starts its sticky-socket route listener (which drops
// a peer's cached source address when routes change) only for that exact
// type, and that listener's netlink socket would watch the wrong namespace
// anywhere else.
//
// # Lifetime
//
// The device ends when Close is called, when the TUN netdev goes away
// (wireguard-go's read fails and it closes itself) or when its UAPI socket
// file is removed (wireguard-go's convention for stopping a device). In
// every case the UAPI socket is removed and the TUN fd closed, which
// deletes the netdev, and Done is closed.
package wguser
