variable "name" {
  type        = string
  description = "Prefix for every resource (VPC, cluster, node pools, NAS, registry namespace)."
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,28}[a-z0-9]$", var.name))
    error_message = "name must be 4-30 characters: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "project_name" {
  type        = string
  description = "Volcengine project the resources are billed to."
  default     = "default"
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes minor version of the VKE cluster, e.g. \"1.30\"; VKE picks its newest build of it when the cluster is created (console: create cluster, version list)."
  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+$", var.kubernetes_version))
    error_message = "kubernetes_version must be the minor version, e.g. \"1.30\": the Cloud Control provider's kubernetes_version_create takes x.xx, not an exact build like \"v1.30.1-vke.8\"."
  }
}

variable "zone_ids" {
  type        = list(string)
  description = "Availability zones for the subnets (one subnet each), e.g. [\"cn-beijing-a\", \"cn-beijing-b\"]."
  validation {
    condition     = length(var.zone_ids) >= 1 && length(var.zone_ids) <= 3
    error_message = "Give 1 to 3 zones."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "VPC address range; subnets are carved out of it (/20 per zone)."
  default     = "172.16.0.0/16"
  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 16
    error_message = "vpc_cidr must be a valid CIDR of /16 or larger."
  }
}

variable "service_cidr" {
  type        = string
  description = "Kubernetes Service range; must not overlap the VPC."
  default     = "10.254.0.0/18"
  validation {
    condition     = can(cidrhost(var.service_cidr, 0))
    error_message = "service_cidr must be a valid CIDR."
  }
}

variable "api_server_public_access" {
  type        = bool
  description = "Give the API server a public address so the instructor's laptop can run terraform/kubectl. Turn off when working from inside the VPC (bastion, VPN)."
  default     = true
}

variable "system_instance_type" {
  type        = string
  description = "Instance type of the CPU node pool (hub, proxy, KubeRay operator, CPU Ray workers, attendee CPU servers)."
  default     = "ecs.g3i.2xlarge"
}

variable "system_nodes" {
  type = object({
    min     = number
    max     = number
    desired = number
  })
  description = "Size of the CPU node pool; it autoscales between min and max."
  default     = { min = 2, max = 10, desired = 3 }
  validation {
    condition     = var.system_nodes.min >= 1 && var.system_nodes.min <= var.system_nodes.desired && var.system_nodes.desired <= var.system_nodes.max
    error_message = "Need 1 <= min <= desired <= max for system_nodes."
  }
}

variable "gpu_instance_types" {
  type        = list(string)
  description = "GPU instance types, in order of preference (the pool takes the first one with stock), e.g. [\"ecs.gni2.3xlarge\"] (1 x A10)."
  default     = ["ecs.gni2.3xlarge"]
  validation {
    condition     = length(var.gpu_instance_types) >= 1
    error_message = "Give at least one GPU instance type."
  }
}

variable "gpu_nodes" {
  type = object({
    min     = number
    max     = number
    desired = number
  })
  description = "Size of the GPU node pool. min 0 lets it scale to zero outside the session (GPUs bill by the hour)."
  default     = { min = 0, max = 4, desired = 0 }
  validation {
    condition     = var.gpu_nodes.min >= 0 && var.gpu_nodes.min <= var.gpu_nodes.desired && var.gpu_nodes.desired <= var.gpu_nodes.max && var.gpu_nodes.max >= 1
    error_message = "Need 0 <= min <= desired <= max and max >= 1 for gpu_nodes."
  }
}

variable "gpu_node_labels" {
  type        = map(string)
  description = "Labels on GPU nodes; labkit's GPU worker groups select labkit/pool=gpu."
  default     = { "labkit/pool" = "gpu" }
}

variable "gpu_taint" {
  type = object({
    key    = string
    value  = string
    effect = string
  })
  description = "Taint on GPU nodes so only pods that tolerate it (GPU Ray workers, GPU notebook profiles) land there."
  default     = { key = "nvidia.com/gpu", value = "present", effect = "NoSchedule" }
  validation {
    condition     = contains(["NoSchedule", "NoExecute", "PreferNoSchedule"], var.gpu_taint.effect)
    error_message = "gpu_taint.effect must be NoSchedule, NoExecute or PreferNoSchedule."
  }
}

variable "node_disk_gb" {
  type        = number
  description = "Data disk per node for container images (the GPU workshop image is ~15 GB; two versions must fit)."
  default     = 200
  validation {
    condition     = var.node_disk_gb >= 100 && var.node_disk_gb <= 32768
    error_message = "node_disk_gb must be between 100 and 32768."
  }
}

variable "ssh_key_pair_name" {
  type        = string
  description = "Existing ECS key pair for node login (no passwords on nodes)."
}

variable "enable_gpu_sharing" {
  type        = bool
  description = "Install VKE's mGPU add-on so several pods share one GPU (the shared-GPU notebook profile and Ray groups)."
  default     = false
}

variable "addon_versions" {
  type        = map(string)
  description = "Exact versions of the VKE add-ons (nvidia-device-plugin, mgpu, csi-nas); empty means the console's default. Pin them for a repeatable event."
  default     = {}
}

variable "model_cache_gb" {
  type        = number
  description = "Capacity of the NAS file system that holds the shared model cache (gpu profile models are ~10 GB)."
  default     = 200
  validation {
    condition     = var.model_cache_gb >= 100
    error_message = "model_cache_gb must be at least 100."
  }
}

variable "nas_permission_group_id" {
  type        = string
  description = "Existing NAS permission group for the model cache's mount point, e.g. \"pgroup-0123abcd\" (Cloud Control has no permission-group resource; NAS console, permission groups: one rule, the VPC's CIDR, read-write)."
  validation {
    condition     = can(regex("^pgroup-[0-9a-z]+$", var.nas_permission_group_id))
    error_message = "nas_permission_group_id must be a NAS permission group id such as \"pgroup-0123abcd\" (NAS console, permission groups)."
  }
}

variable "registry_name" {
  type        = string
  description = "Existing Volcengine container registry (CR) instance to mirror images into; a namespace named after `name` is created in it."
}

variable "egress_bandwidth_mbps" {
  type        = number
  description = "Bandwidth of the NAT gateway's public IP (image and model pulls go through it)."
  default     = 100
  validation {
    condition     = var.egress_bandwidth_mbps >= 5 && var.egress_bandwidth_mbps <= 500
    error_message = "egress_bandwidth_mbps must be between 5 and 500."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags on every resource that takes them (cost reports per event)."
  default     = { "app" = "labkit-workshop" }
}

variable "kubeconfig_valid_hours" {
  type        = number
  description = "How long the generated kubeconfigs stay valid; long enough for setup, the event and teardown."
  default     = 168
  validation {
    condition     = var.kubeconfig_valid_hours >= 1 && var.kubeconfig_valid_hours <= 43800
    error_message = "kubeconfig_valid_hours must be between 1 and 43800."
  }
}
