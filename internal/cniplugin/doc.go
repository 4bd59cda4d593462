// Package cniplugin is the flannel CNI plugin: a drop-in for upstream's
// `flannel` plugin (flannel-io/cni-plugin) as kube-flannel's cni-conf.json
// uses it. It does no networking itself. It reads subnet.env, which
// flanneld writes once it has leased this node's subnet, turns it into the
// network configuration of a delegate plugin (by default the reference
// `bridge` plugin with `host-local` IPAM over the node's subnet) and runs
// that delegate.
//
// # Design notes
//
// The delegate configuration built on ADD is saved under the data dir
// (default /var/lib/cni/flannel) as <containerID>, before the delegate runs.
// DEL and CHECK replay that saved configuration rather than rebuilding it,
// so a pod can always be torn down with the configuration it was set up
// with — even after flanneld leased a different subnet, changed the MTU,
// or stopped and removed subnet.env. Saving first matters: if the plugin is
// killed while the delegate runs, the runtime's DEL still finds the file
// and host-local releases the address. The path, file name and content
// (the delegate's JSON configuration) are upstream's, so a node can switch
// between upstream's plugin and ours with pods running, in either
// direction, and each can delete the other's pods.
//
// host-local's own data dir is deliberately left at host-local's default
// (/var/lib/cni/networks) unless the net conf's `ipam` says otherwise:
// upstream leaves it there, and moving it would make host-local forget the
// addresses of the pods already running on a migrated node and hand them
// out a second time.
//
// The merge rules follow upstream's documentation. Fields the plugin
// always sets: `name`, `cniVersion` and `ipam` (with `ranges` from
// FLANNEL_SUBNET/FLANNEL_IPV6_SUBNET and a route to every network that
// FLANNEL_NETWORK and FLANNEL_IPV6_NETWORK list, comma-separated). Fields set only when the `delegate` map does not:
// `type` (bridge), `ipMasq` (the inverse of FLANNEL_IPMASQ: when flanneld
// masquerades, the bridge must not do it a second time), `mtu`, and for
// bridge `isGateway`. The routes to the cluster networks are added whether
// or not the delegate asks for `isDefaultGateway`; the bridge plugin then
// adds the default route on top.
//
// Upstream's most reported problem is a pod stuck in ContainerCreating
// with "open /run/flannel/subnet.env: no such file or directory". Here a
// missing subnet.env is a CNI "try again later" error (code 11) that says
// flanneld is not ready on the node and what to check.
package cniplugin
