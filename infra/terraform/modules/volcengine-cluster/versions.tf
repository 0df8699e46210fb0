# The Cloud Control provider, the one Volcano Engine recommends since the legacy
# volcengine/volcengine provider stopped being maintained. Modules accept a range; the env pins it.
terraform {
  required_version = ">= 1.6"
  required_providers {
    volcenginecc = {
      source  = "volcengine/volcenginecc"
      version = ">= 0.0.53, < 0.1.0"
    }
  }
}
