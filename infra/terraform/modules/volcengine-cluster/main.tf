# Volcano Engine network, VKE cluster with a CPU system pool and an autoscaling GPU pool, GPU
# add-ons, a NAS file system for the shared model cache, and a registry namespace for mirrored
# images. Argument names follow the volcengine provider's documentation for each resource.

locals {
  subnets = { for i, zone in var.zone_ids : zone => cidrsubnet(var.vpc_cidr, 4, i) }
  tags    = merge(var.tags, { "labkit/workshop" = var.name })
}

# ---------------------------------------------------------------------------------------------
# Network: one subnet per zone, a security group that admits only the VPC itself, and a NAT
# gateway with SNAT so nodes without public IPs can pull images and packages.
# ---------------------------------------------------------------------------------------------

resource "volcengine_vpc" "this" {
  vpc_name     = "${var.name}-vpc"
  cidr_block   = var.vpc_cidr
  project_name = var.project_name
  dynamic "tags" {
    for_each = local.tags
    content {
      key   = tags.key
      value = tags.value
    }
  }
}

resource "volcengine_subnet" "nodes" {
  for_each    = local.subnets
  subnet_name = "${var.name}-${each.key}"
  cidr_block  = each.value
  zone_id     = each.key
  vpc_id      = volcengine_vpc.this.id
}

resource "volcengine_security_group" "nodes" {
  security_group_name = "${var.name}-nodes"
  description         = "labkit workshop nodes: traffic from inside the VPC only"
  vpc_id              = volcengine_vpc.this.id
  project_name        = var.project_name
}

resource "volcengine_security_group_rule" "ingress_vpc" {
  security_group_id = volcengine_security_group.nodes.id
  direction         = "ingress"
  protocol          = "all"
  port_start        = -1
  port_end          = -1
  cidr_ip           = var.vpc_cidr
  description       = "nodes, pods and the control plane talk inside the VPC"
}

resource "volcengine_security_group_rule" "egress_all" {
  security_group_id = volcengine_security_group.nodes.id
  direction         = "egress"
  protocol          = "all"
  port_start        = -1
  port_end          = -1
  cidr_ip           = "0.0.0.0/0"
  description       = "image, package and model pulls through the NAT gateway"
}

resource "volcengine_nat_gateway" "this" {
  vpc_id           = volcengine_vpc.this.id
  subnet_id        = volcengine_subnet.nodes[var.zone_ids[0]].id
  spec             = "Small"
  nat_gateway_name = "${var.name}-nat"
  description      = "egress for labkit workshop nodes"
  billing_type     = "PostPaid"
  project_name     = var.project_name
}

resource "volcengine_eip_address" "nat" {
  name         = "${var.name}-nat"
  description  = "public address of the workshop NAT gateway"
  billing_type = "PostPaidByBandwidth"
  bandwidth    = var.egress_bandwidth_mbps
  isp          = "BGP"
  project_name = var.project_name
}

resource "volcengine_eip_associate" "nat" {
  allocation_id = volcengine_eip_address.nat.id
  instance_id   = volcengine_nat_gateway.this.id
  instance_type = "Nat"
}

resource "volcengine_snat_entry" "nodes" {
  for_each        = volcengine_subnet.nodes
  snat_entry_name = "${var.name}-${each.key}"
  nat_gateway_id  = volcengine_nat_gateway.this.id
  eip_id          = volcengine_eip_address.nat.id
  subnet_id       = each.value.id
  depends_on      = [volcengine_eip_associate.nat]
}

# ---------------------------------------------------------------------------------------------
# Cluster and node pools
# ---------------------------------------------------------------------------------------------

resource "volcengine_vke_cluster" "this" {
  name                      = var.name
  description               = "labkit workshop cluster"
  project_name              = var.project_name
  kubernetes_version        = var.kubernetes_version
  delete_protection_enabled = false # `terraform destroy` after the event must be able to remove it

  cluster_config {
    subnet_ids                       = [for s in volcengine_subnet.nodes : s.id]
    api_server_public_access_enabled = var.api_server_public_access
    dynamic "api_server_public_access_config" {
      for_each = var.api_server_public_access ? [1] : []
      content {
        public_access_network_config {
          billing_type = "PostPaidByBandwidth"
          bandwidth    = 5
        }
      }
    }
    resource_public_access_default_enabled = false # nodes get no public IPs; egress is the NAT
  }

  pods_config {
    pod_network_mode = "VpcCniShared"
    vpc_cni_config {
      subnet_ids = [for s in volcengine_subnet.nodes : s.id]
    }
  }

  services_config {
    service_cidrsv4 = [var.service_cidr]
  }

  dynamic "tags" {
    for_each = local.tags
    content {
      key   = tags.key
      value = tags.value
    }
  }
  depends_on = [volcengine_snat_entry.nodes]
}

locals {
  # The two pools differ only in these settings; both autoscale and share the node layout below.
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

resource "volcengine_vke_node_pool" "this" {
  for_each   = local.node_pools
  cluster_id = volcengine_vke_cluster.this.id
  name       = "${var.name}-${each.key}"

  auto_scaling {
    enabled          = true
    min_replicas     = each.value.size.min
    max_replicas     = each.value.size.max
    desired_replicas = each.value.size.desired
    subnet_policy    = "ZoneBalance"
  }

  node_config {
    instance_type_ids = each.value.instance_types
    subnet_ids        = [for s in volcengine_subnet.nodes : s.id]
    system_volume {
      type = "ESSD_PL0"
      size = 100
    }
    data_volumes {
      type        = "ESSD_PL0"
      size        = var.node_disk_gb
      mount_point = "/var/lib/containerd"
    }
    security {
      login {
        ssh_key_pair_name = var.ssh_key_pair_name
      }
      security_group_ids  = [volcengine_security_group.nodes.id]
      security_strategies = ["Hids"]
    }
    additional_container_storage_enabled = false
    instance_charge_type                 = "PostPaid"
    name_prefix                          = "${var.name}-${each.key}"
    project_name                         = var.project_name
  }

  kubernetes_config {
    dynamic "labels" {
      for_each = each.value.labels
      content {
        key   = labels.key
        value = labels.value
      }
    }
    dynamic "taints" {
      for_each = each.value.taints
      content {
        key    = taints.value.key
        value  = taints.value.value
        effect = taints.value.effect
      }
    }
    cordon = false
  }

  dynamic "tags" {
    for_each = local.tags
    content {
      key   = tags.key
      value = tags.value
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Add-ons: the NVIDIA device plugin (GPUs as nvidia.com/gpu), optional mGPU sharing, and the NAS
# CSI driver that mounts the model cache.
# ---------------------------------------------------------------------------------------------

locals {
  addons = concat(["nvidia-device-plugin", "csi-nas"], var.enable_gpu_sharing ? ["mgpu"] : [])
}

resource "volcengine_vke_addon" "this" {
  for_each         = toset(local.addons)
  cluster_id       = volcengine_vke_cluster.this.id
  name             = each.key
  version          = lookup(var.addon_versions, each.key, null)
  deploy_node_type = "Node"
  deploy_mode      = "Unmanaged"
  depends_on       = [volcengine_vke_node_pool.this["system"]]
}

# ---------------------------------------------------------------------------------------------
# Shared model cache (NAS, NFS) and the registry namespace for mirrored images
# ---------------------------------------------------------------------------------------------

resource "volcengine_nas_file_system" "models" {
  file_system_name = "${var.name}-models"
  description      = "labkit model cache, seeded once by `labkit models pull --profile gpu`"
  zone_id          = var.zone_ids[0]
  capacity         = var.model_cache_gb
  project_name     = var.project_name
  dynamic "tags" {
    for_each = local.tags
    content {
      key   = tags.key
      value = tags.value
    }
  }
}

resource "volcengine_nas_permission_group" "vpc" {
  permission_group_name = "${var.name}-vpc"
  description           = "read-write from the workshop VPC only"
  permission_rules {
    cidr_ip  = var.vpc_cidr
    rw_mode  = "RW"
    use_mode = "All_squash"
  }
}

resource "volcengine_nas_mount_point" "models" {
  file_system_id      = volcengine_nas_file_system.models.id
  mount_point_name    = "${var.name}-models"
  permission_group_id = volcengine_nas_permission_group.vpc.id
  subnet_id           = volcengine_subnet.nodes[var.zone_ids[0]].id
}

resource "volcengine_cr_namespace" "this" {
  registry = var.registry_name
  name     = var.name
  project  = var.project_name
}

resource "volcengine_vke_kubeconfig" "public" {
  count          = var.api_server_public_access ? 1 : 0
  cluster_id     = volcengine_vke_cluster.this.id
  type           = "Public"
  valid_duration = var.kubeconfig_valid_hours
}

resource "volcengine_vke_kubeconfig" "private" {
  cluster_id     = volcengine_vke_cluster.this.id
  type           = "Private"
  valid_duration = var.kubeconfig_valid_hours
}
