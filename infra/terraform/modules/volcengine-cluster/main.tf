# Volcano Engine network, VKE cluster with a CPU system pool and a GPU pool that scales from zero,
# GPU add-ons, a file NAS for the shared model cache and the registry namespace and repository of
# the workshop image, on the Cloud Control provider (volcengine/volcenginecc). Argument names and
# nesting follow the provider's documentation of each resource (tests/test_infra.py checks them).
#
# Cloud Control takes nested settings as attributes (`x = { ... }`, sets of objects as lists), not
# blocks. Its documentation asks that every object in a set name all of its attributes (null where
# unused): a partly written object shows up as a change on every plan.

locals {
  subnets = { for i, zone in var.zone_ids : zone => cidrsubnet(var.vpc_cidr, 4, i) }
  tags    = merge(var.tags, { "labkit/workshop" = var.name })
  tag_set = [for key, value in local.tags : { key = key, value = value }]
}

# ---------------------------------------------------------------------------------------------
# Network: one subnet per zone, a security group that admits only the VPC itself, and a NAT
# gateway with an EIP and SNAT so nodes without public IPs can pull images and packages.
# ---------------------------------------------------------------------------------------------

resource "volcenginecc_vpc_vpc" "this" {
  vpc_name     = "${var.name}-vpc"
  cidr_block   = var.vpc_cidr
  description  = "labkit workshop network"
  project_name = var.project_name
  tags         = local.tag_set
}

resource "volcenginecc_vpc_subnet" "nodes" {
  for_each    = local.subnets
  subnet_name = "${var.name}-${each.key}"
  cidr_block  = each.value
  zone_id     = each.key
  vpc_id      = volcenginecc_vpc_vpc.this.vpc_id
  tags        = local.tag_set
}

resource "volcenginecc_vpc_security_group" "nodes" {
  vpc_id              = volcenginecc_vpc_vpc.this.vpc_id
  security_group_name = "${var.name}-nodes"
  description         = "labkit workshop nodes: traffic from inside the VPC only"
  project_name        = var.project_name
  ingress_permissions = [{
    direction       = "ingress"
    protocol        = "all"
    port_start      = -1
    port_end        = -1
    cidr_ip         = var.vpc_cidr
    policy          = "accept"
    priority        = 1
    description     = "nodes, pods and the control plane talk inside the VPC"
    prefix_list_id  = null
    source_group_id = null
  }]
  egress_permissions = [{
    direction       = "egress"
    protocol        = "all"
    port_start      = -1
    port_end        = -1
    cidr_ip         = "0.0.0.0/0"
    policy          = "accept"
    priority        = 1
    description     = "image, package and model pulls through the NAT gateway"
    prefix_list_id  = null
    source_group_id = null
  }]
  tags = local.tag_set
}

resource "volcenginecc_natgateway_ngw" "this" {
  vpc_id           = volcenginecc_vpc_vpc.this.vpc_id
  subnet_id        = volcenginecc_vpc_subnet.nodes[var.zone_ids[0]].subnet_id
  nat_gateway_name = "${var.name}-nat"
  description      = "egress for labkit workshop nodes"
  network_type     = "internet"
  spec             = "Small"
  billing_type     = 2 # pay-as-you-go by specification
  project_name     = var.project_name
  tags             = local.tag_set
}

# Cloud Control binds the EIP in the EIP itself (instance_id/instance_type): no associate resource.
resource "volcenginecc_vpc_eip" "nat" {
  name          = "${var.name}-nat"
  description   = "public address of the workshop NAT gateway"
  billing_type  = 2 # pay-as-you-go by bandwidth cap
  bandwidth     = var.egress_bandwidth_mbps
  isp           = "BGP"
  project_name  = var.project_name
  instance_id   = volcenginecc_natgateway_ngw.this.nat_gateway_id
  instance_type = "Nat"
  tags          = local.tag_set
}

resource "volcenginecc_natgateway_snatentry" "nodes" {
  for_each        = volcenginecc_vpc_subnet.nodes
  snat_entry_name = "${var.name}-${each.key}"
  nat_gateway_id  = volcenginecc_natgateway_ngw.this.nat_gateway_id
  eip_id          = volcenginecc_vpc_eip.nat.allocation_id
  subnet_id       = each.value.subnet_id
}

# ---------------------------------------------------------------------------------------------
# Cluster and node pools
# ---------------------------------------------------------------------------------------------

resource "volcenginecc_vke_cluster" "this" {
  name                      = var.name
  description               = "labkit workshop cluster"
  project_name              = var.project_name
  kubernetes_version_create = var.kubernetes_version
  delete_protection_enabled = false # `terraform destroy` after the event must be able to remove it

  cluster_config = {
    subnet_ids                       = [for s in volcenginecc_vpc_subnet.nodes : s.subnet_id]
    api_server_public_access_enabled = var.api_server_public_access
    api_server_public_access_config = var.api_server_public_access ? {
      public_access_network_config = { billing_type = 2, bandwidth = 5, isp = "BGP" }
    } : null
    resource_public_access_default_enabled = false # nodes get no public IPs; egress is the NAT
  }

  pods_config = {
    pod_network_mode = "VpcCniShared"
    vpc_cni_config   = { subnet_ids = [for s in volcenginecc_vpc_subnet.nodes : s.subnet_id] }
  }

  services_config = { service_cidrsv_4 = [var.service_cidr] }

  tags       = local.tag_set
  depends_on = [volcenginecc_natgateway_snatentry.nodes]
}

locals {
  # The two pools differ only in these settings; both autoscale and share the node layout below.
  # The CPU pool's desired size is what the room needs at the door (the env sizes it from the
  # head-count); the GPU pool starts at zero and grows when a GPU server or Ray worker waits.
  node_pools = {
    system = {
      instance_types = [var.system_instance_type]
      size           = var.system_nodes
      labels         = { "labkit/pool" = "system" }
      taints         = []
    }
    gpu = {
      instance_types = var.gpu_instance_types
      size           = var.gpu_nodes
      labels         = var.gpu_node_labels
      taints         = [var.gpu_taint]
    }
  }
}

resource "volcenginecc_vke_node_pool" "this" {
  for_each   = local.node_pools
  cluster_id = volcenginecc_vke_cluster.this.cluster_id
  name       = "${var.name}-${each.key}"

  auto_scaling = {
    enabled          = true
    min_replicas     = each.value.size.min
    max_replicas     = each.value.size.max
    desired_replicas = each.value.size.desired
    subnet_policy    = "ZoneBalance"
  }

  node_config = {
    instance_type_ids    = each.value.instance_types
    subnet_ids           = [for s in volcenginecc_vpc_subnet.nodes : s.subnet_id]
    instance_charge_type = "PostPaid"
    name_prefix          = "${var.name}-${each.key}"
    project_name         = var.project_name
    system_volume        = { type = "ESSD_PL0", size = 100 }
    # The first data disk holds container images and logs: the GPU image is about 15 GB.
    additional_container_storage_enabled = true
    data_volumes = [{
      type               = "ESSD_PL0"
      size               = var.node_disk_gb
      file_system        = "Ext4"
      mount_point        = null
      snapshot_id        = null
      placement_group_id = null
      subgroup_number    = null
    }]
    security = {
      login               = { ssh_key_pair_name = var.ssh_key_pair_name }
      security_group_ids  = [volcenginecc_vpc_security_group.nodes.security_group_id]
      security_strategies = ["Hids"]
    }
    tags = local.tag_set
  }

  kubernetes_config = {
    labels = [for key, value in each.value.labels : { key = key, value = value }]
    taints = [for t in each.value.taints : { key = t.key, value = t.value, effect = t.effect }]
    cordon = false
  }

  tags = local.tag_set
}

# ---------------------------------------------------------------------------------------------
# Add-ons: the NVIDIA device plugin (GPUs as nvidia.com/gpu), optional mGPU sharing, the NAS CSI
# driver that mounts the model cache, and the cluster autoscaler that grows the pools.
# ---------------------------------------------------------------------------------------------

locals {
  addons = concat(["nvidia-device-plugin", "csi-nas", "cluster-autoscaler"], var.enable_gpu_sharing ? ["mgpu"] : [])
}

resource "volcenginecc_vke_addon" "this" {
  for_each         = toset(local.addons)
  cluster_id       = volcenginecc_vke_cluster.this.cluster_id
  name             = each.key
  version          = lookup(var.addon_versions, each.key, null)
  deploy_node_type = "Node"
  deploy_mode      = "Unmanaged"
  depends_on       = [volcenginecc_vke_node_pool.this["system"]]
}

# ---------------------------------------------------------------------------------------------
# Shared model cache (file NAS over NFS), and the registry namespace and repository the workshop
# image is pushed to.
# ---------------------------------------------------------------------------------------------

resource "volcenginecc_filenas_instance" "models" {
  file_system_name = "${var.name}-models"
  description      = "labkit model cache, seeded once by the platform's seeding Job"
  zone_id          = var.zone_ids[0]
  file_system_type = "Capacity"
  protocol_type    = "NFS"
  charge_type      = "PayAsYouGo"
  capacity         = { total = var.model_cache_gb }
  project_name     = var.project_name
  tags             = [for key, value in local.tags : { key = key, value = value, type = "Custom" }]
}

# Cloud Control has no NAS permission-group resource: the mount point takes an existing group
# (the NAS console's default group, or one that admits only the VPC; see the env README).
resource "volcenginecc_filenas_mount_point" "models" {
  file_system_id      = volcenginecc_filenas_instance.models.file_system_id
  mount_point_name    = "${var.name}-models"
  permission_group_id = var.nas_permission_group_id
  vpc_id              = volcenginecc_vpc_vpc.this.vpc_id
  subnet_id           = volcenginecc_vpc_subnet.nodes[var.zone_ids[0]].subnet_id
}

resource "volcenginecc_cr_name_space" "this" {
  registry = var.registry_name
  name     = var.name
  project  = var.project_name
}

resource "volcenginecc_cr_repository" "workshop" {
  registry     = var.registry_name
  namespace    = volcenginecc_cr_name_space.this.name
  name         = "workshop"
  description  = "labkit workshop images (CPU and -gpu tags), pulled by every node before doors open"
  access_level = "Private"
}

resource "volcenginecc_vke_kubeconfig" "public" {
  count          = var.api_server_public_access ? 1 : 0
  cluster_id     = volcenginecc_vke_cluster.this.cluster_id
  type           = "Public"
  valid_duration = var.kubeconfig_valid_hours
}

resource "volcenginecc_vke_kubeconfig" "private" {
  cluster_id     = volcenginecc_vke_cluster.this.cluster_id
  type           = "Private"
  valid_duration = var.kubeconfig_valid_hours
}
