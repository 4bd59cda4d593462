package dataplane

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// addIPIPLink creates an ipip device with want's local address and any
// remote (the routes' on-link gateways are the tunnels' far ends). A
// kernel without the ipip module refuses the kind: ErrKernelLacks.
func (n *Netlink) addIPIPLink(want Link) error {
	err := n.h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: want.Name, MTU: want.MTU}, Local: want.Local.AsSlice()})
	if errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("%w: ipip (load the ipip module: modprobe ipip): %w", ErrKernelLacks, err)
	}
	if err != nil {
		return err
	}
	n.log.Info("created link", "link", want.Name, "kind", "ipip", "local", want.Local)
	return nil
}

func fromIPIP(v *netlink.Iptun) instLink {
	a := v.Attrs()
	local, _ := addrFromIP(v.Local)
	return instLink{
		Link:  Link{Kind: KindIPIP, Name: a.Name, MTU: a.MTU, Local: local},
		index: a.Index,
		up:    a.Flags&net.FlagUp != 0,
	}
}
